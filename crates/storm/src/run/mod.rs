//! One whole run: the space (given, or created with a synthetic host), the listener processes,
//! the live progress line, step-up judging, and the merged report.
//!
//! Contract: [`run`] validates the scenario, runs it against the server, and returns the
//! [`Report`] (also written as JSON and HTML when asked). Every wait is bounded by the
//! scenario's length plus fixed margins; the server is never anything but a loopback address.

use crate::error::{Error, Result};
pub mod agent;
pub mod ddos;
pub mod engine;

use crate::actors::host;
use crate::net::clock::now_us;
use crate::net::clock::sleep_until_us;
use crate::net::http;
use crate::observe::health::Health;
use crate::observe::stats::merge_points;
use crate::observe::stats::Aggregate;
use crate::observe::stats::HostStats;
use crate::observe::stats::Point;
use crate::plan::objective::Objective;
use crate::plan::scenario::Kind;
use crate::plan::scenario::Scenario;
use crate::plan::target::Target;
use crate::report;
use crate::report::Inputs;
use crate::report::Report;
use crate::report::StepResult;
use crate::run::engine::PartResult;
use crate::run::engine::Plan;
use crate::run::engine::Progress;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Objectives of a scenario that states none: every listener joined and kept its audio.
pub const DEFAULT_OBJECTIVES: [&str; 2] = ["listeners.failed == 0", "listeners.dropped == 0"];

/// Where the results go.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// JSON summary path.
    pub json: Option<PathBuf>,
    /// HTML report path.
    pub html: Option<PathBuf>,
    /// No progress line.
    pub quiet: bool,
    /// The binary to start agents from (default: this one).
    pub exe: Option<PathBuf>,
}

/// Live totals for the progress line.
#[derive(Default)]
struct Live {
    /// Seconds → (merged point, parts reported, waiting, cpu %).
    seconds: BTreeMap<u32, (Point, u32, u64, f64)>,
    joins: u64,
    failures: u64,
    drops: u64,
    shown: Option<u32>,
}

fn progress_line(
    t: u32,
    p: &Point,
    waiting: u64,
    cpu: f64,
    totals: (u64, u64),
    planned: u64,
) -> String {
    format!(
        "storm {t:>4}s  listening {:>6}/{planned}  waiting {:>5}  failed {:>5}  dropped {:>4} | {:>7.1}k frames/s | e2e p50 {:>6.1} p99 {:>6.1} ms | gaps {:>4} stalls {:>4} | gen cpu {:>4.0}%",
        p.connected,
        waiting,
        totals.0,
        totals.1,
        p.frames as f64 / 1000.0,
        p.latency.quantile(0.5) as f64 / 1000.0,
        p.latency.quantile(0.99) as f64 / 1000.0,
        p.gaps,
        p.stalls,
        cpu
    )
}

/// Runs `sc`. See the module docs.
pub async fn run(mut sc: Scenario, out: Output) -> Result<Report> {
    sc.validate()?;
    let target = Target::parse(&sc.server)?;
    let objectives = if sc.objectives.is_empty() {
        DEFAULT_OBJECTIVES.iter().map(|e| e.to_string()).collect()
    } else {
        sc.objectives.clone()
    }
    .iter()
    .map(|e| Objective::parse(e))
    .collect::<Result<Vec<_>, _>>()?;
    let (space, key) = match &sc.space {
        _ if sc.mount.is_some() => (
            sc.mount.as_ref().map(|m| m.label()).unwrap_or_default(),
            None,
        ),
        Some(id) => {
            http::get_space(&target, id).await?;
            (id.clone(), None)
        }
        None => {
            let info = http::create_space(&target, &format!("storm {}", sc.name), None).await?;
            let key = info
                .host_key
                .ok_or(Error::server("the API gave no host key"))?;
            (info.id, Some(key))
        }
    };
    let before = http::space_metrics(&target, &space).await.ok();
    // The server's view rule, so that listeners know which of them it must count as views.
    if sc.mount.is_none() {
        match http::space_audience(&target, &space).await {
            Ok(v) => {
                if let Some(s) = v["view_after_s"].as_f64().filter(|s| *s >= 0.0) {
                    sc.audience.view_after = Some(Duration::from_secs_f64(s));
                }
            }
            Err(e) if sc.audience.check => return Err(e),
            Err(_) => {}
        }
    }
    let procs = sc.procs.max(1);
    let start_us = now_us() + if procs > 1 { 2_000_000 } else { 1_000_000 };
    let run_end_us = start_us + sc.run_length().as_micros() as u64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let parent_cpu0 = crate::net::clock::rusage().0;

    let host_task = key.clone().map(|k| {
        tokio::spawn(host::run_host(
            target.clone(),
            space.clone(),
            k,
            sc.host.clone(),
            start_us,
            run_end_us,
            stop_rx.clone(),
        ))
    });
    let host_task = host_task.or_else(|| {
        crate::actors::source::spawn_source(&sc, start_us, run_end_us, stop_rx.clone())
    });
    let drain = key.is_some() && sc.host.end_space;
    let plan = Plan {
        scenario: sc.clone(),
        space: space.clone(),
        start_us,
        proc_index: 0,
        procs,
        drain,
    };
    let (ptx, mut prx) = mpsc::channel::<(u32, Progress)>(1024);
    let parts = if procs == 1 {
        let (tx1, mut rx1) = mpsc::channel::<Progress>(64);
        let fwd = ptx.clone();
        tokio::spawn(async move {
            while let Some(p) = rx1.recv().await {
                let _ = fwd.try_send((0, p));
            }
        });
        let threads = crate::run::engine::threads_per_proc(1);
        let stop = stop_rx.clone();
        vec![tokio::spawn(async move {
            Ok::<PartResult, Error>(engine::run_part(plan, tx1, stop, threads).await)
        })]
    } else {
        let exe = match &out.exe {
            Some(e) => e.clone(),
            None => {
                std::env::current_exe().map_err(|e| Error::server(format!("current exe: {e}")))?
            }
        };
        agent::spawn_listener_agents(&exe, &plan, ptx.clone(), stop_rx.clone())?
    };
    drop(ptx);
    let mut all_done = tokio::spawn(async move {
        let mut results = Vec::new();
        for p in parts {
            results.push(
                p.await
                    .map_err(|e| Error::server(e.to_string()))
                    .and_then(|r| r),
            );
        }
        results
    });

    // Step-up windows, judged as they end.
    let windows: Vec<(u64, Duration, Duration)> = if sc.kind == Kind::Capacity && sc.step.is_some()
    {
        sc.windows()
    } else {
        Vec::new()
    };
    let mut steps: Vec<StepResult> = Vec::new();
    let mut live = Live::default();
    let mut timeline: Vec<Point> = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let planned = sc.planned_listeners();
    let mut ended_space = false;
    let mut stopped = false;
    let hard_end = run_end_us + engine::DRAIN.as_micros() as u64 + 30_000_000;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let results = loop {
        tokio::select! {
            r = &mut all_done => break r.map_err(|e| Error::server(e.to_string()))?,
            Some((_, p)) = prx.recv() => {
                let t = p.point.t;
                live.joins += p.point.joins;
                live.failures += p.point.failures;
                live.drops += p.point.drops;
                merge_points(&mut timeline, std::slice::from_ref(&p.point), engine::MAX_POINTS);
                let totals = (live.failures, live.drops);
                let e = live.seconds.entry(t).or_insert_with(|| (Point::new(t), 0, 0, 0.0));
                e.0.merge(&p.point);
                e.1 += 1;
                e.2 += p.waiting;
                e.3 += p.cpu_pct;
                let show = e.1 == procs && !out.quiet && live.shown.is_none_or(|s| t > s);
                if show {
                    let line = progress_line(t, &e.0, e.2, e.3, totals, planned);
                    let mut err = std::io::stderr().lock();
                    let _ = if tty { write!(err, "\r{line}") } else { writeln!(err, "{line}") };
                    live.shown = Some(t);
                }
                live.seconds.retain(|&s, _| s + 5 > t);
            }
            _ = tick.tick() => {
                let now = now_us();
                // Judge each capacity window a little after it ends (its last second reported).
                while steps.len() < windows.len() && !stopped {
                    let (n, from, to) = windows[steps.len()];
                    if now < start_us + to.as_micros() as u64 + 1_500_000 {
                        break;
                    }
                    let s = report::step_result(n, from.as_secs() as u32, to.as_secs() as u32, &timeline, &objectives);
                    let failed = !s.passed;
                    if !out.quiet {
                        eprintln!("\nstorm: level {n} listeners {}", if failed { "FAILED its objectives: stopping (knee found)" } else { "held" });
                    }
                    steps.push(s);
                    if failed {
                        stopped = true;
                        let _ = stop_tx.send(true);
                    }
                }
                if !ended_space && (now >= run_end_us || stopped) {
                    ended_space = true;
                    if drain {
                        if let Some(k) = &key {
                            // The host ends itself at run_end; give its last packets a moment.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if let Err(e) = http::end_space(&target, &space, k).await {
                                eprintln!("storm: could not end space {space}: {e}");
                            }
                        }
                    }
                }
                if now > hard_end {
                    let _ = stop_tx.send(true);
                    all_done.abort();
                    return Err(Error::server("listener processes did not finish in time"));
                }
            }
        }
    };
    if tty && !out.quiet {
        eprintln!();
    }
    let host_stats: Option<HostStats> = match host_task {
        Some(h) => h.await.ok(),
        None => None,
    };
    // Server counters settle once listeners are gone.
    sleep_until_us(now_us() + 100_000).await;
    let after = http::space_metrics(&target, &space).await.ok();
    let server = match (before, after) {
        (Some(b), Some(a)) => Some(
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .collect(),
        ),
        _ => None,
    };
    let mut agg = Aggregate::default();
    let mut merged_tl: Vec<Point> = Vec::new();
    let mut health = Health::default();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(part) => {
                agg.merge(&part.agg);
                merge_points(&mut merged_tl, &part.timeline, engine::MAX_POINTS);
                health.merge(&part.health);
            }
            Err(e) => errors.push(e),
        }
    }
    // Levels whose window ended with the run are judged on the merged timeline.
    if !stopped {
        while steps.len() < windows.len() {
            let (n, from, to) = windows[steps.len()];
            let s = report::step_result(
                n,
                from.as_secs() as u32,
                to.as_secs() as u32,
                &merged_tl,
                &objectives,
            );
            let failed = !s.passed;
            steps.push(s);
            if failed {
                break;
            }
        }
    }
    let parent_cpu_s = if procs > 1 {
        crate::net::clock::rusage().0 - parent_cpu0
    } else {
        0.0
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let started = agg.listeners;
    let mut rep = report::build(
        Inputs {
            scenario: &sc,
            space: &space,
            start_us,
            agg: &agg,
            timeline: &merged_tl,
            health: &health,
            parent_cpu_s,
            cores,
            host: host_stats.clone(),
            server,
            started,
        },
        &objectives,
        steps,
    );
    if !errors.is_empty() {
        rep.valid = false;
        rep.invalid_reasons
            .extend(errors.iter().map(|e| e.to_string()));
    }
    if let Some(e) = host_stats.as_ref().and_then(|h| h.error.clone()) {
        rep.valid = false;
        rep.invalid_reasons
            .push(format!("synthetic host failed: {e}"));
    }
    if sc.audience.view_after.is_some() {
        let did = crate::report::audience::Did {
            tally: agg.audience.clone(),
            failed_sessions: agg.sessions_failed,
            failed_listeners: agg.listeners_failed,
            peak_seen: rep.listeners.peak_connected,
        };
        // An attack on the space changes what it serves: the ddos run judges with it.
        if sc.kind != Kind::DdosDuringBroadcast {
            audience_verdict(&mut rep, &target, &space, did, None, sc.audience.check).await;
        } else {
            rep.audience = Some(crate::report::audience::AudienceReport {
                did,
                ..crate::report::audience::AudienceReport::default()
            });
        }
    }
    if let Some(p) = &out.json {
        let text = serde_json::to_string_pretty(&rep).map_err(|e| Error::server(e.to_string()))?;
        std::fs::write(p, text)
            .map_err(|e| Error::server(format!("write {}: {e}", p.display())))?;
    }
    if let Some(p) = &out.html {
        std::fs::write(p, crate::report::html::render(&rep))
            .map_err(|e| Error::server(format!("write {}: {e}", p.display())))?;
    }
    Ok(rep)
}

/// Asks the server for the space's audience numbers (its sessions have all ended: the
/// listeners are done) and holds them against `did`; with `check`, a mismatch fails the run.
pub(crate) async fn audience_verdict(
    rep: &mut Report,
    target: &Target,
    space: &str,
    did: crate::report::audience::Did,
    attack: Option<&crate::observe::attack::AttackResult>,
    check: bool,
) {
    // The server counts a session when its shard sees the leaving (an HLS one once its
    // player has been silent for the server's idle bound, 8 s): give the last ones a
    // moment, bounded.
    let deadline = now_us() + 15_000_000;
    let served = loop {
        match http::space_audience(target, space).await {
            Ok(v) if v["listeners"].as_u64() == Some(0) || now_us() >= deadline => break Ok(v),
            Ok(_) => sleep_until_us(now_us() + 100_000).await,
            Err(e) => break Err(e),
        }
    };
    match served {
        Ok(v) => {
            let a = crate::report::audience::judge(v, did, attack);
            if check && !a.passed {
                rep.passed = false;
            }
            rep.audience = Some(a);
        }
        Err(e) if check => {
            rep.valid = false;
            rep.invalid_reasons
                .push(format!("the audience numbers could not be read: {e}"));
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {}
