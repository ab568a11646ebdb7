//! The JSON summary of a run and its pass/fail objectives, as pure code.
//!
//! Contract: [`build`] turns the merged figures of a run into a [`Report`] (every field is
//! documented in `docs/storm.md`; the names are fixed so scripts can rely on them).
//! [`Objective::parse`] reads `METRIC OP VALUE[UNIT]` (for example `ttfa_p99 < 500ms`,
//! `delivered_ratio > 0.999`, `listeners_with_stall_pct < 0.1`); [`evaluate`] judges objectives
//! against any JSON object by the dotted path of a numeric field, with the aliases described
//! in [`resolve`]. A missing metric fails its objective (a typo must not pass silently).

pub mod attack;
pub mod audience;
pub mod ddos;
pub mod html;
pub mod join;

use crate::observe::health::Health;
use crate::observe::hist::Hist;
use crate::observe::hist::Percentiles;
use crate::observe::stats::pct;
use crate::observe::stats::Aggregate;
use crate::observe::stats::FormatCounts;
use crate::observe::stats::HostStats;
use crate::observe::stats::Point;
use crate::plan::objective::evaluate;
use crate::plan::objective::flatten;
use crate::plan::objective::resolve;
use crate::plan::objective::Objective;
use crate::plan::objective::ObjectiveResult;
use crate::plan::scenario::Format;
use crate::plan::scenario::Scenario;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Listener counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Listeners {
    /// Listeners in the plan.
    pub planned: u64,
    /// Listeners that ran (less than planned when a step-up stopped early).
    pub started: u64,
    /// Listeners that got audio at least once.
    pub joined: u64,
    /// Listeners that never got audio.
    pub failed: u64,
    /// Joined sessions lost before their planned end.
    pub dropped: u64,
    /// Most listeners with audio at once.
    pub peak_connected: u64,
    /// `joined` as % of `started`.
    pub joined_pct: f64,
    /// `failed` as % of `started`.
    pub failed_pct: f64,
}

/// Connection attempts of a run (more than listeners in churn).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sessions {
    /// Attempts.
    pub attempts: u64,
    /// Attempts that got audio.
    pub joined: u64,
    /// Attempts that failed before audio.
    pub failed: u64,
    /// Joined sessions lost before their planned end.
    pub dropped: u64,
    /// Attempts that retried a failed join (churn).
    pub retries: u64,
}

/// What the LL-HLS listeners asked for and what reached the origin: behind a cache, the
/// origin's share falls as listeners grow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HlsFigures {
    /// Where the listeners fetched from (a cache), when not the server itself.
    pub via: Option<String>,
    /// Requests the HLS listeners made (playlists and parts).
    pub requests: u64,
    /// Parts they received.
    pub parts: u64,
    /// Their requests per part received (about 2: the part and the playlist that names the next).
    pub requests_per_part: f64,
    /// HLS requests levee answered over the run (its `levee_hls_requests_total`, every kind,
    /// the whole node), when `/metrics` was readable.
    pub origin_requests: Option<u64>,
    /// The same per second of the run.
    pub origin_requests_per_s: Option<f64>,
    /// Origin requests over the listeners' requests: about 1 direct, far below behind a cache.
    pub origin_share: Option<f64>,
}

/// The generator's own cost and health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// Processes (the parent included when it ran listeners).
    pub procs: u32,
    /// Worker threads in all.
    pub threads: u32,
    /// CPU of all generator processes, % of the machine (all cores).
    pub cpu_pct: f64,
    /// Busiest process, % of one core.
    pub cpu_core_pct_max: f64,
    /// Busiest process, % of its worker threads' capacity.
    pub cpu_busy_pct_max: f64,
    /// CPU time, s.
    pub cpu_s: f64,
    /// CPU per listener-second, µs.
    pub cpu_us_per_listener_s: f64,
    /// The server's CPU per listener-second over the same run (its `process_cpu_seconds_total`,
    /// the whole node), when its `/metrics` says.
    pub server_cpu_us_per_listener_s: Option<f64>,
    /// The generator's CPU per listener-second over the server's: below 0.5, the generator
    /// costs less than half of what it measures.
    pub cpu_vs_server: Option<f64>,
    /// The listener threads' CPU per listener-second, µs: what reading and measuring each
    /// listener costs, without the synthetic host, attackers and the run's bookkeeping (a
    /// fixed cost that weighs on small audiences).
    #[serde(default)]
    pub listen_cpu_us_per_listener_s: f64,
    /// `listen_cpu_us_per_listener_s` over the server's CPU per listener-second.
    #[serde(default)]
    pub listen_cpu_vs_server: Option<f64>,
    /// Listener-seconds of audio held (sum over seconds of listeners with audio).
    pub listener_seconds: f64,
    /// Peak resident memory of the listener processes, MiB.
    pub rss_peak_mb: f64,
    /// Resident memory each listener adds, KiB: the growth from a quarter of the audience to
    /// its peak over the listeners added (start-up memory, histograms included, left out).
    pub mem_per_listener_kb: f64,
    /// Event-loop lag (a 50 ms timer's lateness), ms.
    pub loop_lag_ms: Percentiles,
    /// Scheduled join → connection started: how late the generator itself was, ms.
    pub start_lag_ms: Percentiles,
    /// Most sockets held at once.
    pub sockets_peak: u64,
    /// Failures due to the generator's own limits.
    pub local_failures: u64,
    /// Whether the generator was saturated (the run is then invalid).
    pub saturated: bool,
    /// Listener threads whose batched reads went through io_uring; the others (`threads`
    /// less these) used epoll.
    #[serde(default)]
    pub io_uring_threads: u32,
}

/// One capacity level, judged on its hold window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Listeners planned at this level.
    pub level_listeners: u64,
    /// Window start, s after the run's start.
    pub from_s: u32,
    /// Window end, s.
    pub to_s: u32,
    /// Mean listeners with audio over the window.
    pub connected_mean: f64,
    /// Audio delivered in the window.
    pub delivered_ratio: f64,
    /// End-to-end latency of the window's frames.
    pub e2e_latency_ms: Percentiles,
    /// Time to first audio of the joins completed in the window.
    pub ttfa_ms: Percentiles,
    /// Window counts under `listeners.` so objectives resolve as on the whole run.
    pub listeners: BTreeMap<String, f64>,
    /// Stalls ended in the window per mean listener, % (an approximation of the share of
    /// listeners with a stall).
    pub listeners_with_stall_pct: f64,
    /// Whether every objective that applies to a window held.
    pub passed: bool,
    /// The objectives judged.
    pub objectives: Vec<ObjectiveResult>,
}

/// One second of the timeline, as shown in reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Seconds since the run's start.
    pub t: u32,
    /// Listeners with audio.
    pub connected: u64,
    /// Joins completed.
    pub joins: u64,
    /// Join failures.
    pub failures: u64,
    /// Sessions dropped.
    pub drops: u64,
    /// Frames received.
    pub frames: u64,
    /// Missing audio of gaps that ended in the second, ms.
    pub gap_ms: f64,
    /// Stalls that ended in the second.
    pub stalls: u64,
    /// Underruns.
    pub underruns: u64,
    /// End-to-end latency, ms.
    pub latency_p50_ms: f64,
    /// End-to-end latency, ms.
    pub latency_p99_ms: f64,
    /// End-to-end latency, ms.
    pub latency_max_ms: f64,
    /// Time to first audio of the second's joins, p99, ms.
    pub ttfa_p99_ms: f64,
}

/// The JSON summary. See `docs/storm.md` for every field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this summary.
    pub version: u32,
    /// The scenario run (durations as text).
    pub scenario: Value,
    /// Space listened to.
    pub space: String,
    /// False when the generator itself was saturated or hit its own limits.
    pub valid: bool,
    /// Why the run is invalid.
    pub invalid_reasons: Vec<String>,
    /// Whether every objective held (step-up: whether at least one level held).
    pub passed: bool,
    /// Run start, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// The same instant as a human date (RFC 3339, UTC).
    pub started_at: String,
    /// Run length, s.
    pub duration_s: f64,
    /// Listener counts.
    pub listeners: Listeners,
    /// Connection attempt counts.
    pub sessions: Sessions,
    /// Failed joins by reason.
    pub failures: BTreeMap<String, u64>,
    /// Dropped sessions by reason.
    pub drops: BTreeMap<String, u64>,
    /// Scheduled → TCP connected.
    pub connect_ms: Percentiles,
    /// Scheduled → HTTP answer.
    pub response_ms: Percentiles,
    /// Scheduled → first audio frame.
    pub ttfa_ms: Percentiles,
    /// Capture → arrival, every frame.
    pub e2e_latency_ms: Percentiles,
    /// Churn: leaving in a wave → audio again (the rejoin delay, backoff and retries included).
    pub rejoin_ms: Percentiles,
    /// Joins through the join API, when listeners joined through it.
    #[serde(default)]
    pub join: Option<crate::report::join::JoinReport>,
    /// Audio received / (received + missing).
    pub delivered_ratio: f64,
    /// Frames received.
    pub frames_received: u64,
    /// Audio received, s.
    pub audio_received_s: f64,
    /// Gaps.
    pub gaps: u64,
    /// Missing audio, ms.
    pub gap_ms_total: f64,
    /// Each listener's longest gap.
    pub worst_gap_ms: Percentiles,
    /// % of joined sessions with a gap.
    pub listeners_with_gap_pct: f64,
    /// Stall bound, ms.
    pub stall_bound_ms: u64,
    /// Stalls.
    pub stalls: u64,
    /// Time in stalls, ms.
    pub stall_ms_total: f64,
    /// Each listener's longest stall.
    pub worst_stall_ms: Percentiles,
    /// % of joined sessions with a stall longer than the bound.
    pub listeners_with_stall_pct: f64,
    /// Simulated playout buffer, ms.
    pub playout_ms: u64,
    /// Joined sessions that measured timing on every frame (one in `meter.timed_every`):
    /// underruns, jitter and end-to-end latency come from them.
    pub timed_sessions: u64,
    /// Frames those sessions received.
    pub timed_frames: u64,
    /// Underruns.
    pub underruns: u64,
    /// Time the simulated players waited, ms.
    pub underrun_ms_total: f64,
    /// Each listener's total underrun time.
    pub underrun_ms: Percentiles,
    /// % of timed sessions with an underrun.
    pub listeners_with_underrun_pct: f64,
    /// Each timed listener's interarrival jitter.
    pub jitter_ms: Percentiles,
    /// Duplicate or reordered frames.
    pub late_frames: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Counts per format.
    pub by_format: BTreeMap<Format, FormatCounts>,
    /// LL-HLS listeners' requests and the origin's, when the run had HLS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsFigures>,
    /// The server's audience numbers held against what the run did, when the server serves
    /// them (`[audience]`; a failed check fails the run only with `check = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<crate::report::audience::AudienceReport>,
    /// The generator's cost and health.
    pub generator: Generator,
    /// The synthetic host, when one ran.
    pub host: Option<HostStats>,
    /// The space's levee counters over the run (`/metrics` after − before), when readable.
    pub server: Option<BTreeMap<String, f64>>,
    /// Capacity levels, when stepping up.
    pub steps: Vec<StepResult>,
    /// Listeners at the highest level whose objectives held (step-up only).
    pub knee_listeners: Option<u64>,
    /// Objectives and how they fared.
    pub objectives: Vec<ObjectiveResult>,
    /// Time to first audio: (ms, joins) per histogram bucket.
    pub ttfa_histogram: Vec<(f64, u64)>,
    /// One row per second.
    pub timeline: Vec<Row>,
}

/// Everything a report is built from.
pub struct Inputs<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// Space id.
    pub space: &'a str,
    /// Run start, Unix µs.
    pub start_us: u64,
    /// Merged figures.
    pub agg: &'a Aggregate,
    /// Merged timeline.
    pub timeline: &'a [Point],
    /// Merged generator health (listener processes).
    pub health: &'a Health,
    /// Parent process CPU s (host, merging) when listeners ran in agents.
    pub parent_cpu_s: f64,
    /// Cores of the machine.
    pub cores: u32,
    /// The synthetic host.
    pub host: Option<HostStats>,
    /// Server counter deltas.
    pub server: Option<BTreeMap<String, f64>>,
    /// Listeners that ran.
    pub started: u64,
}

/// Event-loop lag (p99) above which the generator counts as saturated, µs.
pub const LAG_LIMIT_US: u64 = 100_000;

/// Join start lateness (p99) above which the generator did not keep the schedule, µs.
pub const START_LAG_LIMIT_US: u64 = 100_000;

/// CPU use of one process, % of its worker threads, at which it counts as saturated.
pub const CPU_LIMIT_PCT: f64 = 90.0;

/// Evaluates one capacity window from the timeline.
pub fn step_result(
    listeners: u64,
    from_s: u32,
    to_s: u32,
    timeline: &[Point],
    objectives: &[Objective],
) -> StepResult {
    let mut sum = Point::new(from_s);
    let mut connected = 0u64;
    let mut n = 0u64;
    for p in timeline.iter().filter(|p| p.t >= from_s && p.t < to_s) {
        sum.merge(p);
        connected += p.connected;
        n += 1;
    }
    let mean = if n == 0 {
        0.0
    } else {
        connected as f64 / n as f64
    };
    let expected = sum.audio_us + sum.gap_us;
    let mut s = StepResult {
        level_listeners: listeners,
        from_s,
        to_s,
        connected_mean: mean,
        delivered_ratio: if expected == 0 {
            1.0
        } else {
            sum.audio_us as f64 / expected as f64
        },
        e2e_latency_ms: sum.latency.summary_ms(),
        ttfa_ms: sum.ttfa.summary_ms(),
        listeners: BTreeMap::from([
            ("failed".to_owned(), sum.failures as f64),
            ("dropped".to_owned(), sum.drops as f64),
            ("joined".to_owned(), sum.joins as f64),
        ]),
        listeners_with_stall_pct: if mean > 0.0 {
            sum.stalls as f64 * 100.0 / mean
        } else {
            0.0
        },
        passed: true,
        objectives: Vec::new(),
    };
    let fields = flatten(&serde_json::to_value(&s).unwrap_or(Value::Null));
    // Only objectives whose metric a window has are judged per window.
    let applicable: Vec<Objective> = objectives
        .iter()
        .filter(|o| resolve(&o.metric, &fields).is_some())
        .cloned()
        .collect();
    s.objectives = evaluate(&applicable, &fields);
    s.passed = s.objectives.iter().all(|o| o.passed);
    s
}

/// The HLS section of a report: `None` without HLS listeners.
fn hls_figures(
    sc: &Scenario,
    a: &Aggregate,
    server: Option<&BTreeMap<String, f64>>,
) -> Option<HlsFigures> {
    let f = a.by_format.get(&Format::Hls)?;
    let origin = server.map(|m| {
        m.iter()
            .filter(|(k, _)| k.starts_with("levee_hls_requests_total"))
            .map(|(_, v)| v.max(0.0) as u64)
            .sum::<u64>()
    });
    let run_s = sc.run_length().as_secs_f64().max(1e-9);
    Some(HlsFigures {
        via: sc.hls_via.clone(),
        requests: f.requests,
        parts: f.pages,
        requests_per_part: if f.pages > 0 {
            f.requests as f64 / f.pages as f64
        } else {
            0.0
        },
        origin_requests: origin,
        origin_requests_per_s: origin.map(|o| o as f64 / run_s),
        origin_share: origin
            .filter(|_| f.requests > 0)
            .map(|o| o as f64 / f.requests as f64),
    })
}

/// Builds the summary (objectives judged, `passed` and `valid` set). See the module docs.
pub fn build(inp: Inputs<'_>, objectives: &[Objective], steps: Vec<StepResult>) -> Report {
    let a = inp.agg;
    let h = inp.health;
    let us_ms = |us: u64| us as f64 / 1000.0;
    let listener_seconds: f64 = inp.timeline.iter().map(|p| p.connected as f64).sum();
    let server_cpu_us = inp
        .server
        .as_ref()
        .and_then(|m| m.get("process_cpu_seconds_total"))
        .filter(|_| listener_seconds > 0.0)
        .map(|cpu_s| cpu_s * 1e6 / listener_seconds);
    let cpu_s = h.cpu_s + inp.parent_cpu_s;
    let wall = h.wall_s.max(1e-9);
    let mut invalid = Vec::new();
    let saturated_cpu = h.cpu_busy_pct_max >= CPU_LIMIT_PCT;
    let lag_p99 = h.loop_lag.quantile(0.99);
    if saturated_cpu {
        invalid.push(format!(
            "generator CPU saturated: a process used {:.0}% of its worker threads",
            h.cpu_busy_pct_max
        ));
    }
    if lag_p99 > LAG_LIMIT_US {
        invalid.push(format!(
            "generator event loop lagging: p99 lag {:.1} ms",
            lag_p99 as f64 / 1000.0
        ));
    }
    let start_lag_p99 = a.start_lag.quantile(0.99);
    if start_lag_p99 > START_LAG_LIMIT_US {
        invalid.push(format!(
            "generator behind its schedule: joins started {:.1} ms late (p99)",
            start_lag_p99 as f64 / 1000.0
        ));
    }
    if a.local_failures > 0 {
        invalid.push(format!(
            "{} joins failed on the generator's own limits (addresses, ports, file descriptors)",
            a.local_failures
        ));
    }
    let generator = Generator {
        procs: h.procs,
        threads: h.threads,
        cpu_pct: cpu_s * 100.0 / wall / inp.cores.max(1) as f64,
        cpu_core_pct_max: h.cpu_core_pct_max,
        cpu_busy_pct_max: h.cpu_busy_pct_max,
        cpu_s,
        server_cpu_us_per_listener_s: server_cpu_us,
        cpu_vs_server: server_cpu_us
            .filter(|&s| s > 0.0 && listener_seconds > 0.0)
            .map(|s| h.cpu_s * 1e6 / listener_seconds / s),
        cpu_us_per_listener_s: if listener_seconds > 0.0 {
            h.cpu_s * 1e6 / listener_seconds
        } else {
            0.0
        },
        listen_cpu_us_per_listener_s: if listener_seconds > 0.0 {
            h.listen_cpu_s * 1e6 / listener_seconds
        } else {
            0.0
        },
        listen_cpu_vs_server: server_cpu_us
            .filter(|&s| s > 0.0 && listener_seconds > 0.0)
            .map(|s| h.listen_cpu_s * 1e6 / listener_seconds / s),
        listener_seconds,
        rss_peak_mb: h.rss_peak_kb as f64 / 1024.0,
        mem_per_listener_kb: if h.listeners_growth > 0 {
            h.rss_growth_kb as f64 / h.listeners_growth as f64
        } else {
            0.0
        },
        loop_lag_ms: h.loop_lag.summary_ms(),
        start_lag_ms: a.start_lag.summary_ms(),
        sockets_peak: h.sockets_peak,
        local_failures: a.local_failures,
        saturated: saturated_cpu || lag_p99 > LAG_LIMIT_US || start_lag_p99 > START_LAG_LIMIT_US,
        io_uring_threads: h.io_uring_threads,
    };
    let started = inp.started;
    let timeline = inp
        .timeline
        .iter()
        .map(|p| Row {
            t: p.t,
            connected: p.connected,
            joins: p.joins,
            failures: p.failures,
            drops: p.drops,
            frames: p.frames,
            gap_ms: us_ms(p.gap_us),
            stalls: p.stalls,
            underruns: p.underruns,
            latency_p50_ms: us_ms(p.latency.quantile(0.5)),
            latency_p99_ms: us_ms(p.latency.quantile(0.99)),
            latency_max_ms: us_ms(p.latency.max()),
            ttfa_p99_ms: us_ms(p.ttfa.quantile(0.99)),
        })
        .collect();
    let mut r = Report {
        version: 1,
        scenario: serde_json::to_value(inp.scenario).unwrap_or(Value::Null),
        space: inp.space.to_owned(),
        valid: invalid.is_empty(),
        invalid_reasons: invalid,
        passed: false,
        started_at_unix_ms: inp.start_us / 1000,
        started_at: human_date(inp.start_us),
        duration_s: h.wall_s,
        listeners: Listeners {
            planned: inp.scenario.planned_listeners(),
            started,
            joined: a.listeners_joined,
            failed: a.listeners_failed,
            dropped: a.sessions_dropped,
            peak_connected: h.listeners_peak,
            joined_pct: pct(a.listeners_joined, started),
            failed_pct: pct(a.listeners_failed, started),
        },
        sessions: Sessions {
            attempts: a.sessions,
            joined: a.sessions_joined,
            failed: a.sessions_failed,
            dropped: a.sessions_dropped,
            retries: a.retries,
        },
        failures: a.failure_reasons.clone(),
        drops: a.drop_reasons.clone(),
        connect_ms: a.connect.summary_ms(),
        response_ms: a.response.summary_ms(),
        ttfa_ms: a.ttfa.summary_ms(),
        e2e_latency_ms: a.e2e.summary_ms(),
        rejoin_ms: a.rejoin.summary_ms(),
        join: crate::report::join::report(&a.join_api),
        delivered_ratio: a.delivered_ratio(),
        frames_received: a.frames,
        audio_received_s: a.audio_us as f64 / 1e6,
        gaps: a.gaps,
        gap_ms_total: us_ms(a.gap_us),
        worst_gap_ms: zero_floor(&a.worst_gap),
        listeners_with_gap_pct: pct(a.sessions_with_gap, a.sessions_joined),
        stall_bound_ms: inp.scenario.meter.stall_ms,
        stalls: a.stalls,
        stall_ms_total: us_ms(a.stall_us),
        worst_stall_ms: zero_floor(&a.worst_stall),
        listeners_with_stall_pct: a.stall_pct(),
        playout_ms: inp.scenario.meter.playout_ms,
        timed_sessions: a.sessions_timed,
        timed_frames: a.frames_timed,
        underruns: a.underruns,
        underrun_ms_total: us_ms(a.underrun_us),
        underrun_ms: zero_floor(&a.underrun_time),
        listeners_with_underrun_pct: pct(a.sessions_with_underrun, a.sessions_timed),
        jitter_ms: a.jitter.summary_ms(),
        late_frames: a.late_frames,
        bytes_received: a.bytes,
        by_format: a.by_format.clone(),
        hls: hls_figures(inp.scenario, a, inp.server.as_ref()),
        audience: None,
        generator,
        host: inp.host,
        server: inp.server,
        knee_listeners: None,
        steps: Vec::new(),
        objectives: Vec::new(),
        ttfa_histogram: a
            .ttfa
            .buckets()
            .into_iter()
            .map(|(us, n)| (us_ms(us), n))
            .collect(),
        timeline,
    };
    let fields = flatten(&serde_json::to_value(&r).unwrap_or(Value::Null));
    r.objectives = evaluate(objectives, &fields);
    if steps.is_empty() {
        r.passed = r.objectives.iter().all(|o| o.passed);
    } else {
        let knee = steps
            .iter()
            .take_while(|s| s.passed)
            .last()
            .map(|s| s.level_listeners);
        r.knee_listeners = knee;
        r.passed = knee.is_some();
        r.steps = steps;
    }
    r
}

/// Percentiles where the histogram's 1 µs floor (recorded zeros) reads as 0.
fn zero_floor(h: &Hist) -> Percentiles {
    let mut p = h.summary_ms();
    for v in [&mut p.p50, &mut p.p90, &mut p.p99, &mut p.p999, &mut p.max] {
        if *v <= 0.001 {
            *v = 0.0;
        }
    }
    p
}

/// `us` (since the Unix epoch) as an RFC 3339 date in UTC, to the millisecond.
pub fn human_date(us: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us / 1000 * 1000);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The exit code of a finished run (see the module docs).
pub fn exit_code(r: &Report) -> u8 {
    if !r.valid {
        2
    } else if !r.passed {
        1
    } else {
        0
    }
}

/// A short human summary of a report.
pub fn summary_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = std::fmt::Write::write_fmt(
        &mut s,
        format_args!(
            "storm {} on space {} at {}: {} ({})\n\
             listeners: planned {} joined {} failed {} dropped {} (peak {})\n\
             ttfa ms: p50 {:.1} p99 {:.1} max {:.1} | e2e latency ms: p50 {:.1} p99 {:.1} max {:.1}\n\
             delivered {:.5} | gaps {} ({:.0} ms) | worst gap p99 {:.1} ms | stalls {} | listeners with stall {:.2}% | underruns {}\n\
             generator: cpu {:.1}% of the machine ({:.1} µs per listener-second), {:.1} KiB per listener, loop lag p99 {:.1} ms\n",
            r.scenario["kind"].as_str().unwrap_or("?"),
            r.space,
            r.started_at,
            if r.passed { "PASSED" } else { "FAILED" },
            if r.valid { "valid".to_owned() } else { format!("INVALID: {}", r.invalid_reasons.join("; ")) },
            r.listeners.planned,
            r.listeners.joined,
            r.listeners.failed,
            r.listeners.dropped,
            r.listeners.peak_connected,
            r.ttfa_ms.p50,
            r.ttfa_ms.p99,
            r.ttfa_ms.max,
            r.e2e_latency_ms.p50,
            r.e2e_latency_ms.p99,
            r.e2e_latency_ms.max,
            r.delivered_ratio,
            r.gaps,
            r.gap_ms_total,
            r.worst_gap_ms.p99,
            r.stalls,
            r.listeners_with_stall_pct,
            r.underruns,
            r.generator.cpu_pct,
            r.generator.cpu_us_per_listener_s,
            r.generator.mem_per_listener_kb,
            r.generator.loop_lag_ms.p99,
        ),
    );
    if let (Some(server), Some(ratio), Some(listen)) = (
        r.generator.server_cpu_us_per_listener_s,
        r.generator.cpu_vs_server,
        r.generator.listen_cpu_vs_server,
    ) {
        s.push_str(&format!(
            "server: cpu {server:.1} µs per listener-second; the generator costs {ratio:.2}× the server ({listen:.2}× in its listener threads, {:.1} µs; batched reads through io_uring in {} of {} threads)\n",
            r.generator.listen_cpu_us_per_listener_s,
            r.generator.io_uring_threads,
            r.generator.threads,
        ));
    }
    if let Some(h) = &r.hls {
        s.push_str(&format!(
            "hls: {} requests for {} parts ({:.2} per part){}",
            h.requests,
            h.parts,
            h.requests_per_part,
            h.via
                .as_ref()
                .map_or(String::new(), |v| format!(", through {v}"))
        ));
        if let (Some(o), Some(ps), Some(share)) =
            (h.origin_requests, h.origin_requests_per_s, h.origin_share)
        {
            s.push_str(&format!(
                "; the origin answered {o} ({ps:.1}/s, {share:.3} of the listeners' requests)"
            ));
        }
        s.push('\n');
    }
    for o in &r.objectives {
        s.push_str(&format!(
            "objective {:<36} {} (measured {})\n",
            o.expr,
            if o.passed { "ok" } else { "FAILED" },
            o.actual.map_or("n/a".into(), |v| format!("{v:.4}"))
        ));
    }
    if r.rejoin_ms.count > 0 {
        s.push_str(&format!(
            "churn: {} rejoins, leave → audio again ms: p50 {:.1} p99 {:.1} max {:.1}; {} retried joins\n",
            r.rejoin_ms.count, r.rejoin_ms.p50, r.rejoin_ms.p99, r.rejoin_ms.max, r.sessions.retries
        ));
    }
    if let Some(k) = r.knee_listeners {
        s.push_str(&format!("knee: objectives held up to {k} listeners\n"));
    }
    if let Some(a) = &r.audience {
        s.push_str(&crate::report::audience::text(a));
    }
    if !r.failures.is_empty() {
        s.push_str(&format!("join failures: {:?}\n", r.failures));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scenario::Kind;

    fn inputs<'a>(
        sc: &'a Scenario,
        agg: &'a Aggregate,
        tl: &'a [Point],
        h: &'a Health,
    ) -> Inputs<'a> {
        Inputs {
            scenario: sc,
            space: "s",
            start_us: 0,
            agg,
            timeline: tl,
            health: h,
            parent_cpu_s: 0.0,
            cores: 2,
            host: None,
            server: None,
            started: 10,
        }
    }

    #[test]
    fn saturated_generators_make_the_run_invalid() {
        let sc = Scenario::new(Kind::Capacity, 10);
        let agg = Aggregate::default();
        let mut h = Health {
            procs: 1,
            threads: 2,
            wall_s: 10.0,
            cpu_s: 19.0,
            cpu_busy_pct_max: 95.0,
            ..Default::default()
        };
        let r = build(inputs(&sc, &agg, &[], &h), &[], vec![]);
        assert!(!r.valid);
        assert!(r.generator.saturated);
        assert!((r.generator.cpu_pct - 95.0).abs() < 1e-9);
        h.cpu_busy_pct_max = 20.0;
        let r = build(inputs(&sc, &agg, &[], &h), &[], vec![]);
        assert!(r.valid && r.passed);
    }

    #[test]
    fn capacity_windows_find_the_knee() {
        // Two levels: the second has 5 % of its audio missing.
        let mut tl = Vec::new();
        for t in 0..20u32 {
            let mut p = Point::new(t);
            p.connected = if t < 10 { 100 } else { 200 };
            p.audio_us = p.connected * 1_000_000;
            p.gap_us = if t >= 10 { 10_000_000 } else { 0 };
            p.latency.record(30_000);
            tl.push(p);
        }
        let objs = [Objective::parse("delivered_ratio > 0.99").unwrap()];
        let s1 = step_result(100, 0, 10, &tl, &objs);
        let s2 = step_result(200, 10, 20, &tl, &objs);
        assert!(s1.passed);
        assert!(!s2.passed);
        assert!((s2.delivered_ratio - 200.0 / 210.0).abs() < 1e-9);
        let sc = Scenario::new(Kind::Capacity, 100);
        let agg = Aggregate::default();
        let h = Health::default();
        let r = build(inputs(&sc, &agg, &tl, &h), &objs, vec![s1, s2]);
        assert_eq!(r.knee_listeners, Some(100));
        assert!(r.passed);
    }
}
