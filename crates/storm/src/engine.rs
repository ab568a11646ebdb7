//! The runner of one generator process: spawns the listeners of its share of the schedule at
//! their scheduled times, ticks the timeline every second, and watches its own health.
//!
//! Contract: [`run_part`] takes a [`Plan`] (the scenario, the space, the run's start in Unix µs,
//! and which share of the listeners is this process's), sends one [`Progress`] per second of the
//! run on its channel (bounded; a full channel drops the update, never blocks), and returns a
//! [`PartResult`] once every listener has ended. It stops early when `stop` turns true. The
//! same code runs in the parent (`--procs 1`) and in each agent process.

use crate::client::{self, now_us, sleep_until_us, Bounds, Endpoint, Gauges, Shard};
use crate::hist::Hist;
use crate::scenario::{self, hash3, Kind, Reconnect, Rng, Scenario, Slot};
use crate::stats::{Aggregate, Point};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Most timeline points kept (one per second).
pub const MAX_POINTS: usize = 4 * 3600;
/// Shards of frame-level figures (listeners are spread over them by index).
pub const SHARDS: usize = 16;
/// How long listeners wait for the server's close after the run's end when the space is
/// being ended.
pub const DRAIN: Duration = Duration::from_secs(5);

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

struct Ctx {
    ep: Endpoint,
    sc: Scenario,
    start_us: u64,
    run_end_us: u64,
    drain: bool,
    sources: Vec<std::net::Ipv4Addr>,
    shards: Vec<Mutex<Shard>>,
    agg: Mutex<Aggregate>,
    sockets: AtomicU64,
    connected: AtomicU64,
    waiting: AtomicU64,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn bounds(&self, scheduled_us: u64, leave_us: u64) -> Bounds {
        let end_ok = self.run_end_us;
        let leave = if leave_us >= self.run_end_us && self.drain {
            self.run_end_us + DRAIN.as_micros() as u64
        } else {
            leave_us
        };
        Bounds {
            scheduled_us,
            leave_us: leave,
            end_ok_after_us: end_ok,
        }
    }
}

/// The join times and leave times of one listener's sessions (churn: one per wave it sits
/// out), as (join, leave) offsets from the run's start in µs.
pub fn segments(sc: &Scenario, slot: &Slot) -> Vec<(u64, u64)> {
    let run_end = sc.run_length().as_micros() as u64;
    if sc.kind != Kind::Churn {
        return vec![(slot.join_us, run_end)];
    }
    let c = &sc.churn;
    let first_wave = (scenario::LEAD + sc.ramp).as_micros() as u64;
    let mut out = Vec::new();
    let mut join = slot.join_us;
    for w in 1..=c.waves as u64 {
        let at = first_wave + w * c.wave_every.as_micros() as u64;
        if at <= join || hash3(sc.seed, slot.index, w) >= c.wave_fraction {
            continue;
        }
        out.push((join, at));
        join = match c.reconnect {
            Reconnect::Naive => at,
            Reconnect::Backoff => {
                at + (hash3(sc.seed ^ 0xB0FF, slot.index, w) * c.rejoin_spread.as_micros() as f64)
                    as u64
            }
        };
    }
    out.push((join, run_end));
    out
}

async fn run_slot(ctx: Arc<Ctx>, slot: Slot) {
    let sc = &ctx.sc;
    let shard = &ctx.shards[slot.index as usize % SHARDS];
    let gauges = Gauges {
        sockets: &ctx.sockets,
        connected: &ctx.connected,
        waiting: &ctx.waiting,
    };
    let source =
        (!ctx.sources.is_empty()).then(|| ctx.sources[slot.index as usize % ctx.sources.len()]);
    let retries = sc.kind == Kind::Churn;
    let mut rng = Rng::new(sc.seed ^ slot.index.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut ever_joined = false;
    let mut nonce = slot.index << 16;
    // Churn: when the listener last left in a wave (Unix µs), until it has audio again.
    let mut left_at: Option<u64> = None;
    'segments: for (join, leave) in segments(sc, &slot) {
        let leave_us = ctx.start_us + leave;
        let mut at = ctx.start_us + join;
        let mut attempt = 0u32;
        loop {
            if at >= leave_us || *ctx.stop.borrow() {
                break;
            }
            let mut stop = ctx.stop.clone();
            tokio::select! {
                _ = sleep_until_us(at) => {}
                _ = stop.changed() => break 'segments,
            }
            nonce += 1;
            let (bounds, stop) = (ctx.bounds(at, leave_us), ctx.stop.clone());
            let rec = if crate::joinapi::mode(sc) == crate::joinapi::JoinMode::Api {
                let (rec, join) = crate::joinapi::session(
                    &ctx.ep,
                    slot.format,
                    source,
                    bounds,
                    nonce,
                    shard,
                    &gauges,
                    stop,
                )
                .await;
                let mut agg = ctx.agg.lock().unwrap_or_else(|e| e.into_inner());
                agg.join_api.record(&join);
                rec
            } else {
                client::session(
                    &ctx.ep,
                    slot.format,
                    source,
                    bounds,
                    nonce,
                    shard,
                    &gauges,
                    stop,
                )
                .await
            };
            let failed = rec.join_failure.is_some();
            ever_joined |= !failed;
            {
                let mut agg = ctx.agg.lock().unwrap_or_else(|e| e.into_inner());
                agg.record_session(&rec);
                if attempt > 0 && rec.drop.is_none() {
                    agg.retries += 1;
                }
                if let (Some(left), Some(audio)) = (left_at, rec.join.first_audio_us) {
                    agg.rejoin.record(audio.saturating_sub(left));
                    left_at = None;
                }
            }
            attempt += 1;
            if !retries || attempt >= sc.churn.max_attempts {
                break;
            }
            let delay = if failed {
                match sc.churn.reconnect {
                    Reconnect::Naive => sc.churn.retry_delay.as_micros() as u64,
                    Reconnect::Backoff => {
                        let cap = (sc.churn.backoff_base.as_micros() as u64)
                            .saturating_mul(1 << attempt.min(20))
                            .min(sc.churn.backoff_max.as_micros() as u64);
                        rng.below(cap)
                    }
                }
            } else if rec.drop.is_some() {
                // Dropped by the server mid-session: reconnect as after a failure.
                attempt = 0;
                match sc.churn.reconnect {
                    Reconnect::Naive => sc.churn.retry_delay.as_micros() as u64,
                    Reconnect::Backoff => rng.below(sc.churn.backoff_base.as_micros() as u64),
                }
            } else {
                break;
            };
            at = now_us() + delay.max(1_000);
        }
        if leave_us < ctx.run_end_us {
            left_at = Some(leave_us);
        }
    }
    ctx.agg
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record_slot(ever_joined);
}

/// Runs this process's share of the plan. See the module docs.
pub async fn run_part(
    plan: Plan,
    progress: mpsc::Sender<Progress>,
    stop: watch::Receiver<bool>,
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
        shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        agg: Mutex::new(Aggregate::default()),
        sockets: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
        stop: stop.clone(),
    });
    let mut slots: Vec<Slot> = scenario::schedule(&sc)
        .into_iter()
        .filter(|s| s.index % plan.procs.max(1) as u64 == plan.proc_index as u64)
        .collect();
    slots.sort_by_key(|s| s.join_us);

    // Event-loop lag probe.
    let lag = Arc::new(Mutex::new(Hist::new()));
    let probe = {
        let lag = lag.clone();
        tokio::spawn(async move {
            loop {
                let t = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(50));
                lag.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(late.as_micros() as u64);
            }
        })
    };

    // Ticker: one point per second of the run; on `done`, a last point for the partial second.
    let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let (done_tx, mut done_rx) = watch::channel(false);
    let ticker = {
        let ctx = ctx.clone();
        let peaks = peaks.clone();
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
                for sh in &ctx.shards {
                    let mut sh = sh.lock().unwrap_or_else(|e| e.into_inner());
                    let cur = std::mem::replace(&mut sh.point, Point::new(t));
                    p.merge(&cur);
                }
                p.connected = ctx.connected.load(Relaxed);
                peaks.0.fetch_max(ctx.sockets.load(Relaxed), Relaxed);
                peaks.1.fetch_max(p.connected, Relaxed);
                let cpu = rusage().0;
                let msg = Progress {
                    point: p.clone(),
                    waiting: ctx.waiting.load(Relaxed),
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

    // Spawner: each listener starts shortly before its scheduled time.
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop_rx = stop.clone();
    for slot in slots {
        let wake = (plan.start_us + slot.join_us).saturating_sub(5_000);
        if wake > now_us() {
            tokio::select! {
                _ = sleep_until_us(wake) => {}
                _ = stop_rx.changed() => {}
            }
        }
        if *stop_rx.borrow() {
            break;
        }
        tasks.spawn(run_slot(ctx.clone(), slot));
        // Reap finished listeners as we go, so the set stays the size of the live audience.
        while tasks.try_join_next().is_some() {}
    }
    // Bounded: every listener ends by its planned leave (+ drain) or at stop.
    let hard_end = run_end_us + DRAIN.as_micros() as u64 + 10_000_000;
    loop {
        let left = hard_end.saturating_sub(now_us());
        match tokio::time::timeout(Duration::from_micros(left.max(1)), tasks.join_next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    let _ = done_tx.send(true);
    let timeline = ticker.await.unwrap_or_default();
    probe.abort();
    let mut agg = std::mem::take(&mut *ctx.agg.lock().unwrap_or_else(|e| e.into_inner()));
    for sh in &ctx.shards {
        agg.e2e
            .merge(&sh.lock().unwrap_or_else(|e| e.into_inner()).e2e);
    }
    let (cpu1, rss_peak_kb) = rusage();
    let wall_s = wall0.elapsed().as_secs_f64();
    let cpu_s = cpu1 - cpu0;
    let core_pct = if wall_s > 0.0 {
        cpu_s * 100.0 / wall_s
    } else {
        0.0
    };
    let loop_lag = lag.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
            loop_lag,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_segments_leave_at_waves_and_rejoin_by_policy() {
        let mut sc = Scenario::new(Kind::Churn, 100);
        sc.ramp = Duration::from_secs(1);
        sc.hold = Duration::from_secs(2);
        sc.churn.waves = 2;
        sc.churn.wave_every = Duration::from_secs(3);
        sc.churn.wave_fraction = 1.0;
        sc.churn.reconnect = Reconnect::Naive;
        let slots = scenario::schedule(&sc);
        let segs = segments(&sc, &slots[10]);
        // Everyone leaves at both waves (1.5 s + 3 s, + 6 s) and rejoins at once.
        assert_eq!(
            segs,
            [
                (slots[10].join_us, 4_500_000),
                (4_500_000, 7_500_000),
                (7_500_000, 9_500_000)
            ]
        );
        sc.churn.reconnect = Reconnect::Backoff;
        for s in &slots {
            let segs = segments(&sc, s);
            assert_eq!(segs.len(), 3);
            assert!((4_500_000..5_500_000).contains(&segs[1].0));
        }
        sc.churn.wave_fraction = 0.0;
        assert_eq!(segments(&sc, &slots[3]).len(), 1);
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
