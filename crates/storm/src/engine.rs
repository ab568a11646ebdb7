//! The runner of one generator process: deals its share of the schedule to listener workers
//! ([`crate::reactor`], one thread each), ticks the timeline every second, and watches its own
//! health.
//!
//! Contract: [`run_part`] takes a [`Plan`] (the scenario, the space, the run's start in Unix µs,
//! and which share of the listeners is this process's), sends one [`Progress`] per second of the
//! run on its channel (bounded; a full channel drops the update, never blocks), and returns a
//! [`PartResult`] once every listener has ended. It stops early when `stop` turns true. The
//! same code runs in the parent (`--procs 1`) and in each agent process.

use crate::client::{sleep_until_us, Endpoint, Shard};
use crate::hist::Hist;
use crate::reactor::{Ctx, Gauges, Worker, WorkerResult};
use crate::scenario::{self, Scenario, Slot};
use crate::stats::{Aggregate, Point};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub use crate::reactor::DRAIN;

/// Most timeline points kept (one per second).
pub const MAX_POINTS: usize = 4 * 3600;

/// What one process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Space id.
    pub space: String,
    /// The run's start, Unix µs (schedules are offsets from it).
    pub start_us: u64,
    /// This process's share: listeners whose index modulo `procs` is `proc_index`.
    pub proc_index: u32,
    /// Processes in the run.
    pub procs: u32,
    /// The space will be ended at the run's end: listeners read until the server closes.
    pub drain: bool,
}

/// The generator's view of its own health.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    /// Processes measured.
    pub procs: u32,
    /// Worker threads in all.
    pub threads: u32,
    /// CPU time used (user + system), s.
    pub cpu_s: f64,
    /// Wall time measured, s.
    pub wall_s: f64,
    /// Busiest process's CPU, % of one core.
    pub cpu_core_pct_max: f64,
    /// Busiest process's CPU, % of its worker threads' capacity.
    pub cpu_busy_pct_max: f64,
    /// Resident memory at the start, KiB (summed over processes).
    pub rss_start_kb: u64,
    /// Peak resident memory, KiB (summed over processes).
    pub rss_peak_kb: u64,
    /// Most sockets held at once (summed over processes).
    pub sockets_peak: u64,
    /// Most listeners with audio at once (summed over processes).
    pub listeners_peak: u64,
    /// Resident memory added while the audience grew from a quarter of its peak to its peak,
    /// KiB (summed over processes): what listeners cost, without the fixed start-up memory.
    #[serde(default)]
    pub rss_growth_kb: u64,
    /// Listeners added over the same seconds (summed over processes).
    #[serde(default)]
    pub listeners_growth: u64,
    /// Event-loop lag: how late a 50 ms timer fires, µs.
    pub loop_lag: Hist,
}

impl Health {
    /// Adds another process's health.
    pub fn merge(&mut self, o: &Health) {
        self.procs += o.procs;
        self.threads += o.threads;
        self.cpu_s += o.cpu_s;
        self.wall_s = self.wall_s.max(o.wall_s);
        self.cpu_core_pct_max = self.cpu_core_pct_max.max(o.cpu_core_pct_max);
        self.cpu_busy_pct_max = self.cpu_busy_pct_max.max(o.cpu_busy_pct_max);
        self.rss_start_kb += o.rss_start_kb;
        self.rss_peak_kb += o.rss_peak_kb;
        self.sockets_peak += o.sockets_peak;
        self.listeners_peak += o.listeners_peak;
        self.rss_growth_kb += o.rss_growth_kb;
        self.listeners_growth += o.listeners_growth;
        self.loop_lag.merge(&o.loop_lag);
    }
}

/// One second of one process, sent as it happens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// The second's figures.
    pub point: Point,
    /// Listeners whose join is under way now.
    pub waiting: u64,
    /// This process's CPU over the second, % of one core.
    pub cpu_pct: f64,
}

/// What one process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartResult {
    /// Pooled figures.
    pub agg: Aggregate,
    /// One point per second.
    pub timeline: Vec<Point>,
    /// The process's health.
    pub health: Health,
}

/// Resident memory against listeners with audio, sampled once a second: from the first
/// sample with a quarter of the planned audience to the sample with the most.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemGrowth {
    from: Option<(u64, u64)>,
    to: Option<(u64, u64)>,
}

impl MemGrowth {
    /// One sample: `connected` listeners of `planned`, `rss_kb` resident.
    pub fn sample(&mut self, connected: u64, planned: u64, rss_kb: u64) {
        if self.from.is_none() && connected > 0 && connected * 4 >= planned {
            self.from = Some((connected, rss_kb));
        }
        if self.from.is_some() && self.to.is_none_or(|(c, _)| connected > c) {
            self.to = Some((connected, rss_kb));
        }
    }

    /// (KiB added, listeners added) between the two samples.
    pub fn growth(&self) -> (u64, u64) {
        match (self.from, self.to) {
            (Some((c0, r0)), Some((c1, r1))) => (r1.saturating_sub(r0), c1 - c0),
            _ => (0, 0),
        }
    }
}

/// (user + system CPU seconds, peak RSS KiB) of this process.
pub fn rusage() -> (f64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Resident memory now, KiB (from `/proc/self/statm`; 0 where unavailable).
pub fn rss_now_kb() -> u64 {
    let page_kb = 4;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kb)
}

/// Runs this process's share of the plan. See the module docs.
pub async fn run_part(
    plan: Plan,
    progress: mpsc::Sender<Progress>,
    mut stop: watch::Receiver<bool>,
    threads: u32,
) -> PartResult {
    let (cpu0, _) = rusage();
    let rss_start_kb = rss_now_kb();
    let wall0 = std::time::Instant::now();
    let sc = plan.scenario.clone();
    let target = crate::http::Target::parse(&sc.server).unwrap_or(crate::http::Target {
        addr: ([127, 0, 0, 1], 8080).into(),
        authority: "127.0.0.1:8080".into(),
    });
    let run_end_us = plan.start_us + sc.run_length().as_micros() as u64;
    let ctx = Arc::new(Ctx {
        ep: Endpoint {
            addr: target.addr,
            authority: target.authority.clone(),
            ws_path: format!("/live/{}/ws", plan.space),
            ogg_path: crate::icecast::ogg_path(&sc, &plan.space),
            connect_timeout: sc.connect_timeout,
            first_audio_timeout: sc.first_audio_timeout,
            meter: sc.meter,
        },
        sources: scenario::parse_cidr(&sc.sources).unwrap_or_default(),
        sc: sc.clone(),
        start_us: plan.start_us,
        run_end_us,
        drain: plan.drain,
        gauges: Gauges::default(),
        stop: AtomicBool::new(false),
        stop_rx: stop.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    // This process's listeners, dealt to the workers in turn, each share sorted by join time.
    let workers = threads.max(1) as usize;
    let mut shares: Vec<Vec<Slot>> = vec![Vec::new(); workers];
    let mut mine: Vec<Slot> = scenario::schedule(&sc)
        .into_iter()
        .filter(|s| s.index % plan.procs.max(1) as u64 == plan.proc_index as u64)
        .collect();
    mine.sort_by_key(|s| s.join_us);
    let planned_here = mine.len() as u64;
    for (i, s) in mine.into_iter().enumerate() {
        shares[i % workers].push(s);
    }
    let shards: Vec<Arc<Mutex<Shard>>> = (0..workers)
        .map(|_| Arc::new(Mutex::new(Shard::default())))
        .collect();
    let mut wakers = Vec::new();
    let mut handles = Vec::new();
    for (id, share) in shares.into_iter().enumerate() {
        match Worker::new(ctx.clone(), id, workers, share, shards[id].clone()) {
            Ok(w) => {
                wakers.push(w.waker());
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("storm-listen-{id}"))
                        .spawn(move || w.run()),
                );
            }
            Err(e) => eprintln!("levee storm: cannot start listener worker {id}: {e}"),
        }
    }
    // The stop reaches the workers through their wakers.
    let stopper = {
        let ctx = ctx.clone();
        let wakers = wakers.clone();
        tokio::spawn(async move {
            loop {
                if stop.changed().await.is_err() {
                    return;
                }
                if *stop.borrow() {
                    ctx.stop.store(true, Relaxed);
                    for w in &wakers {
                        let _ = w.wake();
                    }
                    return;
                }
            }
        })
    };

    // Ticker: one point per second of the run; on `done`, a last point for the partial second.
    let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    // Memory against listeners, from a quarter of this process's audience to its peak.
    let growth = Arc::new(Mutex::new(MemGrowth::default()));
    let (done_tx, mut done_rx) = watch::channel(false);
    let ticker = {
        let ctx = ctx.clone();
        let peaks = peaks.clone();
        let shards = shards.clone();
        let growth = growth.clone();
        tokio::spawn(async move {
            let mut timeline: Vec<Point> = Vec::new();
            let mut cpu_prev = rusage().0;
            let mut t: u32 = 0;
            loop {
                let last = tokio::select! {
                    _ = sleep_until_us(ctx.start_us + (t as u64 + 1) * 1_000_000) => false,
                    _ = done_rx.changed() => true,
                };
                let mut p = Point::new(t);
                for sh in &shards {
                    let mut sh = sh.lock().unwrap_or_else(|e| e.into_inner());
                    let cur = std::mem::replace(&mut sh.point, Point::new(t));
                    p.merge(&cur);
                }
                p.connected = ctx.gauges.connected.load(Relaxed);
                peaks.0.fetch_max(ctx.gauges.sockets.load(Relaxed), Relaxed);
                peaks.1.fetch_max(p.connected, Relaxed);
                growth.lock().unwrap_or_else(|e| e.into_inner()).sample(
                    p.connected,
                    planned_here,
                    rss_now_kb(),
                );
                let cpu = rusage().0;
                let msg = Progress {
                    point: p.clone(),
                    waiting: ctx.gauges.waiting.load(Relaxed),
                    cpu_pct: (cpu - cpu_prev) * 100.0,
                };
                cpu_prev = cpu;
                if !last {
                    let _ = progress.try_send(msg);
                }
                if timeline.len() < MAX_POINTS {
                    timeline.push(p);
                }
                if last {
                    return timeline;
                }
                t += 1;
            }
        })
    };

    // Bounded: every worker ends by the run's end plus the drain and a margin.
    let results = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .filter_map(|h| h.ok()?.join().ok())
            .collect::<Vec<WorkerResult>>()
    })
    .await
    .unwrap_or_default();
    stopper.abort();
    let _ = done_tx.send(true);
    let timeline = ticker.await.unwrap_or_default();
    let mut agg = Aggregate::default();
    let mut loop_lag = Hist::new();
    for r in &results {
        agg.merge(&r.agg);
        loop_lag.merge(&r.lag);
    }
    for sh in &shards {
        agg.e2e
            .merge(&sh.lock().unwrap_or_else(|e| e.into_inner()).e2e);
    }
    let (cpu1, rss_peak_kb) = rusage();
    let (rss_growth_kb, listeners_growth) =
        growth.lock().unwrap_or_else(|e| e.into_inner()).growth();
    let wall_s = wall0.elapsed().as_secs_f64();
    let cpu_s = cpu1 - cpu0;
    let core_pct = if wall_s > 0.0 {
        cpu_s * 100.0 / wall_s
    } else {
        0.0
    };
    PartResult {
        agg,
        timeline,
        health: Health {
            procs: 1,
            threads,
            cpu_s,
            wall_s,
            cpu_core_pct_max: core_pct,
            cpu_busy_pct_max: core_pct / threads.max(1) as f64,
            rss_start_kb,
            rss_peak_kb,
            sockets_peak: peaks.0.load(Relaxed),
            listeners_peak: peaks.1.load(Relaxed),
            rss_growth_kb,
            listeners_growth,
            loop_lag,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_listener_is_the_growth_from_a_quarter_of_the_audience_to_its_peak() {
        let mut g = MemGrowth::default();
        // Start-up memory (10 MiB) before anyone listens is not the listeners'.
        g.sample(0, 1000, 10_240);
        g.sample(100, 1000, 30_000);
        g.sample(250, 1000, 30_250);
        g.sample(1000, 1000, 31_000);
        g.sample(900, 1000, 40_000);
        assert_eq!(g.growth(), (750, 750));
        assert_eq!(MemGrowth::default().growth(), (0, 0));
    }

    #[test]
    fn health_of_processes_adds_up() {
        let mut a = Health {
            procs: 1,
            cpu_s: 2.0,
            cpu_core_pct_max: 40.0,
            rss_peak_kb: 1000,
            ..Default::default()
        };
        let b = Health {
            procs: 1,
            cpu_s: 3.0,
            cpu_core_pct_max: 60.0,
            rss_peak_kb: 500,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(
            (a.procs, a.cpu_s, a.cpu_core_pct_max, a.rss_peak_kb),
            (2, 5.0, 60.0, 1500)
        );
    }
}
