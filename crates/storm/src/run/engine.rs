//! The runner of one generator process: deals its share of the schedule to listener workers
//! ([`crate::actors::listeners`], one thread each), ticks the timeline every second, and watches its own
//! health.
//!
//! Contract: [`run_part`] takes a [`Plan`] (the scenario, the space, the run's start in Unix µs,
//! and which share of the listeners is this process's), sends one [`Progress`] per second of the
//! run on its channel (bounded; a full channel drops the update, never blocks), and returns a
//! [`PartResult`] once every listener has ended. It stops early when `stop` turns true. The
//! same code runs in the parent (`--procs 1`) and in each agent process.

use crate::actors::hls::HlsEndpoint;
use crate::actors::listeners::Ctx;
use crate::actors::listeners::Endpoint;
use crate::actors::listeners::Gauges;
use crate::actors::listeners::Worker;
use crate::actors::listeners::WorkerResult;
use crate::net::clock::rss_now_kb;
use crate::net::clock::rusage;
use crate::net::clock::sleep_until_us;
use crate::observe::health::Health;
use crate::observe::health::MemGrowth;
use crate::observe::hist::Hist;
use crate::observe::reader::Shard;
use crate::observe::stats::Aggregate;
use crate::observe::stats::Point;
use crate::plan::scenario;
use crate::plan::scenario::Format;
use crate::plan::scenario::Scenario;
use crate::plan::scenario::Slot;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub use crate::actors::listeners::DRAIN;

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
    let target =
        crate::plan::target::Target::parse(&sc.server).unwrap_or(crate::plan::target::Target {
            addr: ([127, 0, 0, 1], 8080).into(),
            authority: "127.0.0.1:8080".into(),
        });
    let run_end_us = plan.start_us + sc.run_length().as_micros() as u64;
    let ctx = Arc::new(Ctx {
        ep: Endpoint {
            addr: target.addr,
            authority: target.authority.clone(),
            ws_path: format!("/live/{}/ws", plan.space),
            ogg_path: crate::plan::mount::ogg_path(&sc, &plan.space),
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
    let (hls, streams): (Vec<Slot>, Vec<Slot>) =
        mine.into_iter().partition(|s| s.format == Format::Hls);
    for (i, s) in streams.into_iter().enumerate() {
        shares[i % workers].push(s);
    }
    // One more shard for the HLS listeners, which run as tasks on this runtime.
    let shards: Vec<Arc<Mutex<Shard>>> = (0..workers + 1)
        .map(|_| Arc::new(Mutex::new(Shard::default())))
        .collect();
    let hls_agg = Arc::new(Mutex::new(Aggregate::default()));
    let hls_tasks: Vec<_> = if hls.is_empty() {
        Vec::new()
    } else {
        let via = sc.hls_via.as_deref().unwrap_or(&sc.server);
        let t = crate::plan::target::Target::parse(via).unwrap_or_else(|_| target.clone());
        let ep = Arc::new(HlsEndpoint {
            addr: t.addr,
            authority: t.authority,
            playlist: format!("/live/{}/hls/index.m3u8", plan.space),
        });
        hls.into_iter()
            .map(|slot| {
                tokio::spawn(crate::actors::hls::listen(
                    ctx.clone(),
                    ep.clone(),
                    slot,
                    shards[workers].clone(),
                    hls_agg.clone(),
                ))
            })
            .collect()
    };
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
    // HLS listeners end by their planned leave, the stop or a request's bound.
    for t in hls_tasks {
        let _ = t.await;
    }
    stopper.abort();
    let _ = done_tx.send(true);
    let timeline = ticker.await.unwrap_or_default();
    let mut agg = std::mem::take(&mut *hls_agg.lock().unwrap_or_else(|e| e.into_inner()));
    let mut loop_lag = Hist::new();
    let mut listen_cpu_s = 0.0;
    let io_uring_threads = results.iter().filter(|r| r.io_uring).count() as u32;
    for r in &results {
        agg.merge(&r.agg);
        loop_lag.merge(&r.lag);
        listen_cpu_s += r.cpu_s;
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
            listen_cpu_s,
            io_uring_threads,
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

/// Worker threads for each of `procs` processes sharing the machine.
pub fn threads_per_proc(procs: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (cores / procs.max(1)).max(1)
}
