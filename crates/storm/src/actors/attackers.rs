//! The attackers' IO: one OS thread per attack module, each with its own single-threaded
//! runtime, so the CPU a module spends is its thread's CPU (`getrusage(RUSAGE_THREAD)`).
//!
//! Contract: [`run_attack`] runs an [`AttackPlan`] (the server, the target space, the attack's
//! window in Unix µs and the [`AttackConfig`]) and returns an [`AttackResult`] once every
//! worker has stopped: at the window's end, or when `stop` turns true. Each module runs
//! `workers` workers; a worker makes one attempt at a time, paced so that all workers together
//! start `rate` attempts per second (never more, less when the server holds them), from the
//! source addresses of the attack's CIDR in turn (bound before connect). Every attempt is
//! bounded by its module's `hold` and by the window's end; every read by size. What each
//! attempt got is an [`Attempt`] (see [`crate::plan::attack`]).
//!
//! A run normally keeps its attackers in their own process (`levee storm attack-agent`, a
//! hidden subcommand: [`crate::run::agent::attacker_main`], driven by
//! [`crate::run::agent::spawn_attack_agent`]), so that neither their CPU nor
//! their sockets count against the legitimate listeners' generator. The protocol is that of
//! [`crate::run::agent`]: the plan as one JSON line on stdin, `stop` (or the end of stdin) to stop
//! early; its result on stdout.

use crate::net::clock::now_us;
use crate::net::clock::sleep_until_us;
use crate::net::http::connect_with;
use crate::net::http::read_answer;
use crate::observe::attack::AttackResult;
use crate::observe::attack::Attempt;
use crate::observe::attack::ModuleStats;
use crate::observe::attack::Outcome;
use crate::observe::measure::Failure;
use crate::observe::proto::WsParser;
use crate::plan::attack::AttackConfig;
use crate::plan::attack::Module;
use crate::plan::scenario::Rng;
use crate::plan::target::Target;
use bytes::BytesMut;
use levee_core::source::Cidr;
use levee_core::ticket::{Signer, Ticket};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Receive buffer a slow reader asks for, bytes (the kernel rounds it up to its minimum).
pub const SLOW_READER_RCVBUF: u32 = 1024;

/// Bytes a slow reader reads at a time, by default.
pub const SLOW_READER_READ: u32 = 64;

/// Longest a slow reader drains at the end of its hold to see whether it was cut.
pub const DRAIN_FOR: Duration = Duration::from_secs(2);

/// Most bytes a slow reader drains.
pub const DRAIN_MAX: u64 = 8 << 20;

/// Longest answer head read.
pub const MAX_HEAD: usize = 4096;

/// How long a ticket obtained by an attacker is reused (tickets open streams for 60 s).
pub const TICKET_REUSE: Duration = Duration::from_secs(40);

/// What the attack process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackPlan {
    /// The server's base URL (loopback only).
    pub server: String,
    /// The space attacked.
    pub space: String,
    /// Start of the attack, Unix µs.
    pub start_us: u64,
    /// End of the attack, Unix µs.
    pub end_us: u64,
    /// The modules and their settings.
    pub config: AttackConfig,
    /// Seed of the attackers' randomness.
    pub seed: u64,
}

/// What one module's workers share.
struct Ctx {
    target: Target,
    space: String,
    sources: Vec<Ipv4Addr>,
    start_us: u64,
    end_us: u64,
    module: Module,
    workers: u64,
    rate: f64,
    hold: Duration,
    interval: Duration,
    read_bytes: u32,
    seed: u64,
    stop: watch::Receiver<bool>,
    /// Connect → end of the connection of the module's attempts, µs: one histogram per
    /// module, not per worker (its thread is the only one to touch it).
    held: std::sync::Mutex<crate::observe::hist::Hist>,
}

/// The outcome an IO failure stands for.
fn outcome_of(f: &Failure) -> Outcome {
    match f {
        Failure::Refused => Outcome::Refused,
        Failure::Timeout("connect") => Outcome::ConnectTimeout,
        Failure::Timeout(_) => Outcome::Held,
        Failure::Reset => Outcome::Reset,
        Failure::Closed => Outcome::Unanswered,
        Failure::LocalAddr | Failure::LocalFds => Outcome::Local,
        _ => Outcome::Other,
    }
}

/// Runs a plan on this process's threads. See the module docs.
pub fn run_attack(plan: &AttackPlan, stop: watch::Receiver<bool>) -> AttackResult {
    let wall0 = std::time::Instant::now();
    let (cpu0, _) = crate::net::clock::rusage();
    let sources = crate::plan::scenario::parse_cidr(&plan.config.sources).unwrap_or_default();
    let addresses = sources.len() as u64;
    let target = match Target::parse(&plan.server) {
        Ok(t) => t,
        Err(_) => return AttackResult::default(),
    };
    let sources = Arc::new(sources);
    let mut threads = Vec::new();
    for (k, m) in plan.config.active().into_iter().enumerate() {
        let cfg = plan.config.module(m);
        // Each module starts its walk through the addresses at a different place.
        let mut srcs = (*sources).clone();
        if !srcs.is_empty() {
            let shift = (k * 7_919) % srcs.len();
            srcs.rotate_left(shift);
        }
        let ctx = Ctx {
            target: target.clone(),
            space: plan.space.clone(),
            sources: srcs,
            start_us: plan.start_us,
            end_us: plan.end_us,
            module: m,
            workers: cfg.workers as u64,
            rate: cfg.rate,
            hold: cfg.hold_for(m),
            interval: cfg.interval_for(m),
            read_bytes: cfg.read_bytes.unwrap_or(SLOW_READER_READ),
            seed: plan.seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            stop: stop.clone(),
            held: std::sync::Mutex::new(crate::observe::hist::Hist::new()),
        };
        let name = m.label();
        let spawned = std::thread::Builder::new()
            .name(format!("attack-{name}"))
            .spawn(move || {
                let cpu0 = crate::net::clock::thread_cpu_s();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => return ModuleStats::default(),
                };
                let start_us = ctx.start_us;
                let mut st = rt.block_on(run_module(Arc::new(ctx)));
                drop(rt);
                st.cpu_s = crate::net::clock::thread_cpu_s() - cpu0;
                st.wall_s = now_us().saturating_sub(start_us) as f64 / 1e6;
                st
            });
        if let Ok(h) = spawned {
            threads.push((name, h));
        }
    }
    let mut out = AttackResult {
        addresses,
        ..AttackResult::default()
    };
    for (name, h) in threads {
        if let Ok(st) = h.join() {
            out.modules.insert(name.to_owned(), st);
        }
    }
    let (cpu1, rss) = crate::net::clock::rusage();
    out.cpu_s = cpu1 - cpu0;
    out.wall_s = wall0.elapsed().as_secs_f64();
    out.rss_peak_kb = rss;
    out
}

async fn run_module(ctx: Arc<Ctx>) -> ModuleStats {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..ctx.workers {
        set.spawn(worker(ctx.clone(), w));
    }
    let mut total = ModuleStats::default();
    // Bounded: every attempt ends by its hold or the window's end (plus the slow reader's
    // drain); abort anything left a little after that.
    let hard_end =
        ctx.end_us + ctx.hold.as_micros() as u64 + DRAIN_FOR.as_micros() as u64 + 5_000_000;
    loop {
        let left = hard_end.saturating_sub(now_us()).max(1);
        match tokio::time::timeout(Duration::from_micros(left), set.join_next()).await {
            Ok(Some(Ok(s))) => total.merge(&s),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    let held = std::mem::take(&mut *ctx.held.lock().unwrap_or_else(|e| e.into_inner()));
    if held.count() > 0 {
        total.held = Some(held);
    }
    total
}

/// One worker: attempts, paced, until the window ends. See the module docs.
async fn worker(ctx: Arc<Ctx>, w: u64) -> ModuleStats {
    let mut st = ModuleStats {
        workers: 1,
        ..ModuleStats::default()
    };
    let mut stop = ctx.stop.clone();
    let n = ctx.workers.max(1);
    let interval_us = if ctx.rate > 0.0 {
        (n as f64 * 1e6 / ctx.rate) as u64
    } else {
        0
    };
    // Stagger the workers over one interval so the rate is even.
    let mut next = ctx.start_us + interval_us * w / n;
    let mut rng = Rng::new(ctx.seed ^ w.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mut ticket: Option<(String, u64)> = None;
    let mut k = 0u64;
    loop {
        if next >= ctx.end_us || *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = sleep_until_us(next) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() || now_us() >= ctx.end_us {
            break;
        }
        let mut a = attempt(&ctx, w, k, &mut rng, &mut ticket).await;
        if let Some(h) = a.held_us.take() {
            ctx.held.lock().unwrap_or_else(|e| e.into_inner()).record(h);
        }
        st.record(&a);
        k += 1;
        let now = now_us();
        next = if interval_us == 0 {
            now
        } else {
            (next + interval_us).max(now)
        };
    }
    st
}

/// The source address of attempt `k` of worker `w`: modules that hold a ticket keep their
/// worker's address (tickets are bound to the source's /24); the others walk the range.
fn source_for(ctx: &Ctx, w: u64, k: u64) -> Option<Ipv4Addr> {
    if ctx.sources.is_empty() {
        return None;
    }
    let i = match ctx.module {
        Module::SlowReader | Module::GarbageWs => w,
        _ => w + k * ctx.workers,
    };
    Some(ctx.sources[(i % ctx.sources.len() as u64) as usize])
}

/// The deadline of an attempt that starts now.
fn attempt_deadline(ctx: &Ctx) -> u64 {
    let now = now_us();
    (now + ctx.hold.as_micros().max(1) as u64).min(ctx.end_us.max(now + 100_000))
}

async fn attempt(
    ctx: &Ctx,
    w: u64,
    k: u64,
    rng: &mut Rng,
    ticket: &mut Option<(String, u64)>,
) -> Attempt {
    let src = source_for(ctx, w, k);
    match ctx.module {
        Module::JoinFlood => join_flood(ctx, src, k).await,
        Module::ConnFlood => conn_flood(ctx, src).await,
        Module::Slowloris => slowloris(ctx, src, k).await,
        Module::SlowReader => slow_reader(ctx, src, ticket).await,
        Module::ForgedTicket => forged_ticket(ctx, src, k, rng).await,
        Module::GarbageWs => garbage_ws(ctx, src, k, rng, ticket).await,
    }
}

/// Connects, or says how the attempt ended.
async fn open(
    ctx: &Ctx,
    src: Option<Ipv4Addr>,
    deadline_us: u64,
    rcvbuf: Option<u32>,
) -> Result<TcpStream, Attempt> {
    let bound = deadline_us.min(now_us() + 3_000_000);
    connect_with(ctx.target.addr, src, bound, rcvbuf)
        .await
        .map_err(|f| Attempt::failed(outcome_of(&f)))
}

/// Sends `data`; an error ends the attempt.
async fn send(s: &mut TcpStream, data: &[u8], deadline_us: u64) -> Result<(), Outcome> {
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), s.write_all(data)).await {
        Err(_) => Err(Outcome::Held),
        Ok(Err(e)) => Err(outcome_of(&Failure::from_io(&e))),
        Ok(Ok(())) => Ok(()),
    }
}

/// A connected attempt that ended with `outcome`.
fn connected(outcome: Outcome, sent: u64, received: u64) -> Attempt {
    Attempt {
        outcome,
        connected: true,
        accepted: false,
        bytes_sent: sent,
        bytes_received: received,
        held_us: None,
        ticket: false,
    }
}

/// Reads an answer head only (a stream's body is not read); returns the status and the bytes
/// read. `Err` when the server closed or reset first, or the deadline passed.
async fn read_head(s: &mut TcpStream, deadline_us: u64) -> Result<(u16, u64), (Outcome, u64)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline_us.saturating_sub(now_us());
        if left == 0 {
            return Err((Outcome::Held, buf.len() as u64));
        }
        let n = match tokio::time::timeout(Duration::from_micros(left), s.read(&mut chunk)).await {
            Err(_) => return Err((Outcome::Held, buf.len() as u64)),
            Ok(Err(e)) => return Err((outcome_of(&Failure::from_io(&e)), buf.len() as u64)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            let o = if buf.is_empty() {
                Outcome::Unanswered
            } else {
                Outcome::Other
            };
            return Err((o, buf.len() as u64));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return match crate::net::http::parse_status(&buf[..end + 4]) {
                Some(st) => Ok((st, buf.len() as u64)),
                None => Err((Outcome::Other, buf.len() as u64)),
            };
        }
        if buf.len() > MAX_HEAD {
            return Err((Outcome::Other, buf.len() as u64));
        }
    }
}

/// The body a join flood sends on attempt `k`: empty, a forged queue token, a forged proof of
/// work, or not JSON at all.
pub fn flood_body(k: u64) -> String {
    match k % 4 {
        0 => "{}".into(),
        1 => format!(
            r#"{{"queue_token":"q1.{}.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA"}}"#,
            k
        ),
        2 => format!(
            r#"{{"pow":{{"seed":"c1.0.AAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA","nonce":{k}}}}}"#
        ),
        _ => "this is not JSON".into(),
    }
}

async fn join_flood(ctx: &Ctx, src: Option<Ipv4Addr>, k: u64) -> Attempt {
    let deadline = attempt_deadline(ctx);
    let mut s = match open(ctx, src, deadline, None).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    let req = crate::net::join_api::join_request(&ctx.target.authority, &ctx.space, &flood_body(k));
    if let Err(o) = send(&mut s, req.as_bytes(), deadline).await {
        return connected(o, 0, 0);
    }
    let sent = req.len() as u64;
    match read_answer(&mut s, deadline, 16 * 1024).await {
        Ok(a) => Attempt {
            accepted: a.status == 200,
            ..connected(Outcome::Status(a.status), sent, a.bytes)
        },
        Err(f) => connected(outcome_of(&f), sent, 0),
    }
}

async fn conn_flood(ctx: &Ctx, src: Option<Ipv4Addr>) -> Attempt {
    let t0 = now_us();
    let deadline = attempt_deadline(ctx);
    let mut s = match open(ctx, src, deadline, None).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    if ctx.hold.is_zero() {
        // Connect and close: a short look for an answer at accept (429, 503, or a close).
        return match read_answer(&mut s, now_us() + 20_000, 4096).await {
            Ok(a) => connected(Outcome::Status(a.status), 0, a.bytes),
            Err(Failure::Timeout(_)) => connected(Outcome::Dropped, 0, 0),
            Err(f) => connected(outcome_of(&f), 0, 0),
        };
    }
    // Hold silently until the server gives up on us (408) or the hold ends.
    let r = read_answer(&mut s, deadline, 4096).await;
    let held = Some(now_us() - t0);
    let (outcome, bytes) = match r {
        Ok(a) => (Outcome::Status(a.status), a.bytes),
        Err(f) => (outcome_of(&f), 0),
    };
    Attempt {
        held_us: held,
        ..connected(outcome, 0, bytes)
    }
}

async fn slowloris(ctx: &Ctx, src: Option<Ipv4Addr>, k: u64) -> Attempt {
    let t0 = now_us();
    let deadline = attempt_deadline(ctx);
    let mut s = match open(ctx, src, deadline, None).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    let start = format!(
        "GET /live/{}.ogg HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-storm-slowloris\r\n",
        ctx.space, ctx.target.authority
    );
    if let Err(o) = send(&mut s, start.as_bytes(), deadline).await {
        return connected(o, 0, 0);
    }
    let mut sent = start.len() as u64;
    let filler = format!("X-Slow-{k}: {k}\r\n").into_bytes();
    let interval = ctx.interval.max(Duration::from_millis(10));
    let mut i = 0usize;
    let answered = loop {
        if now_us() >= deadline {
            break false;
        }
        let tick = (now_us() + interval.as_micros() as u64).min(deadline);
        let readable = tokio::select! {
            r = s.readable() => r.is_ok(),
            _ = sleep_until_us(tick) => false,
        };
        if readable {
            break true;
        }
        if now_us() >= deadline {
            break false;
        }
        // One more byte of a head that never ends.
        if let Err(o) = send(&mut s, &filler[i % filler.len()..][..1], deadline).await {
            return Attempt {
                held_us: Some(now_us() - t0),
                ..connected(o, sent, 0)
            };
        }
        sent += 1;
        i += 1;
    };
    let (outcome, bytes) = if answered {
        match read_answer(&mut s, now_us() + 1_000_000, 4096).await {
            Ok(a) => (Outcome::Status(a.status), a.bytes),
            Err(f) => (outcome_of(&f), 0),
        }
    } else {
        (Outcome::Held, 0)
    };
    Attempt {
        held_us: Some(now_us() - t0),
        ..connected(outcome, sent, bytes)
    }
}

/// Asks the join API for a ticket once, from `src` (no proof of work, no waiting in line).
async fn fetch_ticket(ctx: &Ctx, src: Option<Ipv4Addr>) -> Option<String> {
    let req = crate::net::join_api::join_request(&ctx.target.authority, &ctx.space, "{}");
    let deadline = now_us() + 2_000_000;
    let a = crate::net::http::exchange(ctx.target.addr, src, req.as_bytes(), deadline)
        .await
        .ok()?;
    if a.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    v["ticket"]
        .as_str()
        .filter(|t| t.len() <= 1024)
        .map(str::to_owned)
}

/// The worker's ticket, renewed when old. Returns (ticket, whether it is new).
async fn worker_ticket(
    ctx: &Ctx,
    src: Option<Ipv4Addr>,
    cache: &mut Option<(String, u64)>,
) -> (Option<String>, bool) {
    let now = now_us();
    if let Some((t, at)) = cache {
        if now < *at + TICKET_REUSE.as_micros() as u64 {
            return (Some(t.clone()), false);
        }
    }
    *cache = fetch_ticket(ctx, src).await.map(|t| (t, now));
    (cache.as_ref().map(|c| c.0.clone()), cache.is_some())
}

fn with_ticket(path: String, ticket: Option<&str>) -> String {
    match ticket {
        Some(t) => format!("{path}?ticket={t}"),
        None => path,
    }
}

async fn slow_reader(
    ctx: &Ctx,
    src: Option<Ipv4Addr>,
    cache: &mut Option<(String, u64)>,
) -> Attempt {
    let (ticket, fresh) = worker_ticket(ctx, src, cache).await;
    let t0 = now_us();
    let deadline = attempt_deadline(ctx);
    let mut s = match open(ctx, src, deadline, Some(SLOW_READER_RCVBUF)).await {
        Ok(s) => s,
        Err(a) => return Attempt { ticket: fresh, ..a },
    };
    let path = with_ticket(format!("/live/{}.ogg", ctx.space), ticket.as_deref());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-storm-slow-reader\r\n\r\n",
        ctx.target.authority
    );
    if let Err(o) = send(&mut s, req.as_bytes(), deadline).await {
        return Attempt {
            ticket: fresh,
            ..connected(o, 0, 0)
        };
    }
    let sent = req.len() as u64;
    let (status, mut received) = match read_head(&mut s, deadline.min(now_us() + 3_000_000)).await {
        Ok(v) => v,
        Err((o, b)) => {
            return Attempt {
                ticket: fresh,
                ..connected(o, sent, b)
            }
        }
    };
    if status != 200 {
        return Attempt {
            ticket: fresh,
            ..connected(Outcome::Status(status), sent, received)
        };
    }
    // Served: now read as little as possible, as slowly as configured.
    let mut buf = vec![0u8; ctx.read_bytes as usize];
    let mut cut = false;
    if ctx.interval.is_zero() {
        let mut stop = ctx.stop.clone();
        tokio::select! {
            _ = sleep_until_us(deadline) => {}
            _ = stop.changed() => {}
        }
    } else {
        while now_us() < deadline && !*ctx.stop.borrow() {
            sleep_until_us((now_us() + ctx.interval.as_micros() as u64).min(deadline)).await;
            match s.try_read(&mut buf) {
                Ok(0) => {
                    cut = true;
                    break;
                }
                Ok(n) => received += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
    }
    let held = now_us() - t0;
    // Drain what is left: an end of stream or a reset means the server cut us.
    if !cut {
        let mut big = vec![0u8; 64 * 1024];
        let until = now_us() + DRAIN_FOR.as_micros() as u64;
        let mut drained = 0u64;
        loop {
            let left = until.saturating_sub(now_us());
            if left == 0 || drained > DRAIN_MAX {
                break;
            }
            match tokio::time::timeout(Duration::from_micros(left), s.read(&mut big)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut = true;
                    break;
                }
                Ok(Ok(n)) => drained += n as u64,
            }
        }
        received += drained;
    }
    Attempt {
        accepted: true,
        held_us: Some(held),
        ticket: fresh,
        ..connected(
            if cut {
                Outcome::Cut
            } else {
                Outcome::StillServed
            },
            sent,
            received,
        )
    }
}

/// A forged ticket for `space` as seen from `src`, variant `k % 4`: random fields, a genuine
/// layout signed with a wrong key, an expired one signed with an old wrong key, an oversized
/// one.
pub fn forge_ticket(k: u64, space: &str, src: Ipv4Addr, now_s: u64, rng: &mut Rng) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    fn wrong(rng: &mut Rng) -> Signer {
        let secret: Vec<u8> = (0..4).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
        Signer::new(&secret, 600)
    }
    match k % 4 {
        0 => {
            let payload: Vec<u8> = (0..5).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
            let mac: Vec<u8> = (0..2).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
            format!(
                "t1.{}.{}.{}",
                now_s / 600,
                B64.encode(payload),
                B64.encode(mac)
            )
        }
        1 => {
            let signer = wrong(rng);
            Ticket {
                space: space.to_owned(),
                listener: rng.next_u64(),
                expires_s: now_s + 60,
                prefix: Some(Cidr::new(IpAddr::V4(src), 24)),
            }
            .sign(&signer, now_s)
        }
        2 => {
            let signer = wrong(rng);
            Ticket {
                space: space.to_owned(),
                listener: rng.next_u64(),
                expires_s: now_s.saturating_sub(120),
                prefix: Some(Cidr::new(IpAddr::V4(src), 24)),
            }
            .sign(&signer, now_s.saturating_sub(3_600))
        }
        _ => "A".repeat(300),
    }
}

async fn forged_ticket(ctx: &Ctx, src: Option<Ipv4Addr>, k: u64, rng: &mut Rng) -> Attempt {
    let deadline = attempt_deadline(ctx);
    let ticket = forge_ticket(
        k,
        &ctx.space,
        src.unwrap_or(Ipv4Addr::LOCALHOST),
        now_us() / 1_000_000,
        rng,
    );
    let req = if (k >> 2) & 1 == 0 {
        format!(
            "GET /live/{}.ogg?ticket={ticket} HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-storm-forger\r\n\r\n",
            ctx.space, ctx.target.authority
        )
    } else {
        format!(
            "GET /live/{}/ws?ticket={ticket} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bGV2ZWUtc3Rvcm0tZm9yZ2U=\r\nSec-WebSocket-Version: 13\r\nUser-Agent: levee-storm-forger\r\n\r\n",
            ctx.space, ctx.target.authority
        )
    };
    let mut s = match open(ctx, src, deadline, None).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    if let Err(o) = send(&mut s, req.as_bytes(), deadline).await {
        return connected(o, 0, 0);
    }
    let sent = req.len() as u64;
    match read_head(&mut s, deadline).await {
        Ok((st, b)) => Attempt {
            accepted: st == 200 || st == 101,
            ..connected(Outcome::Status(st), sent, b)
        },
        Err((o, b)) => connected(o, sent, b),
    }
}

/// Garbage sent after a WebSocket upgrade, variant `k % 5`: random bytes with the reserved
/// bits set, an unmasked frame, a frame with a reserved opcode, a header announcing a
/// terabyte, a text message over levee's 1 KiB limit. Every one is a protocol violation.
pub fn garbage_frame(k: u64, rng: &mut Rng) -> Vec<u8> {
    let mask = rng.next_u64().to_le_bytes();
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    match k % 5 {
        0 => {
            let mut b: Vec<u8> = (0..64).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
            b[0] |= 0x70;
            b
        }
        1 => vec![0x82, 0x05, 1, 2, 3, 4, 5],
        2 => {
            let mut out = BytesMut::new();
            levee_core::wsframe::encode_client_frame(0x3, b"what is this", mask, &mut out);
            out.to_vec()
        }
        3 => {
            let mut b = vec![0x82, 0xFF];
            b.extend_from_slice(&(1u64 << 40).to_be_bytes());
            b.extend_from_slice(&mask);
            b.extend_from_slice(&[0u8; 64]);
            b
        }
        _ => {
            let mut out = BytesMut::new();
            levee_core::wsframe::encode_client_frame(
                levee_core::wsframe::OP_TEXT,
                &[b'x'; 4096],
                mask,
                &mut out,
            );
            out.to_vec()
        }
    }
}

async fn garbage_ws(
    ctx: &Ctx,
    src: Option<Ipv4Addr>,
    k: u64,
    rng: &mut Rng,
    cache: &mut Option<(String, u64)>,
) -> Attempt {
    let (ticket, fresh) = worker_ticket(ctx, src, cache).await;
    let deadline = attempt_deadline(ctx);
    let mut s = match open(ctx, src, deadline, None).await {
        Ok(s) => s,
        Err(a) => return Attempt { ticket: fresh, ..a },
    };
    let path = with_ticket(format!("/live/{}/ws", ctx.space), ticket.as_deref());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bGV2ZWUtc3Rvcm0tZ2FyYmFnZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: levee-storm-garbage\r\n\r\n",
        ctx.target.authority
    );
    let fail = |o: Outcome, sent: u64, got: u64| Attempt {
        ticket: fresh,
        ..connected(o, sent, got)
    };
    if let Err(o) = send(&mut s, req.as_bytes(), deadline).await {
        return fail(o, 0, 0);
    }
    let mut sent = req.len() as u64;
    // Read the answer head; what follows it is WebSocket.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        let left = deadline.saturating_sub(now_us());
        if left == 0 {
            return fail(Outcome::Held, sent, buf.len() as u64);
        }
        match tokio::time::timeout(Duration::from_micros(left), s.read(&mut chunk)).await {
            Err(_) => return fail(Outcome::Held, sent, buf.len() as u64),
            Ok(Err(e)) => return fail(outcome_of(&Failure::from_io(&e)), sent, buf.len() as u64),
            Ok(Ok(0)) => {
                let o = if buf.is_empty() {
                    Outcome::Unanswered
                } else {
                    Outcome::Other
                };
                return fail(o, sent, buf.len() as u64);
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return fail(Outcome::Other, sent, buf.len() as u64);
        }
    };
    let Some(status) = crate::net::http::parse_status(&buf[..head_end]) else {
        return fail(Outcome::Other, sent, buf.len() as u64);
    };
    let mut received = buf.len() as u64;
    if status != 101 {
        return fail(Outcome::Status(status), sent, received);
    }
    let garbage = garbage_frame(k, rng);
    if let Err(o) = send(&mut s, &garbage, deadline).await {
        return Attempt {
            accepted: true,
            ..fail(o, sent, received)
        };
    }
    sent += garbage.len() as u64;
    // Read until the server's close frame or the end of the connection.
    let mut parser = WsParser::default();
    let mut close: Option<u16> = None;
    let mut feed = |data: &[u8], close: &mut Option<u16>| {
        let _ = parser.feed(data, |m| {
            if m.opcode == 0x8 && close.is_none() {
                *close = Some(match m.prefix {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                });
            }
        });
    };
    feed(&buf[head_end..], &mut close);
    let outcome = loop {
        if let Some(c) = close {
            break Outcome::Close(c);
        }
        let left = deadline.saturating_sub(now_us());
        if left == 0 {
            break Outcome::Held;
        }
        match tokio::time::timeout(Duration::from_micros(left), s.read(&mut chunk)).await {
            Err(_) => break Outcome::Held,
            Ok(Err(e)) => break outcome_of(&Failure::from_io(&e)),
            Ok(Ok(0)) => break Outcome::Cut,
            Ok(Ok(n)) => {
                received += n as u64;
                feed(&chunk[..n], &mut close);
            }
        }
    };
    Attempt {
        accepted: true,
        ..fail(outcome, sent, received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::attack::ModuleConfig;
    use crate::report::attack::summarize;
    use levee_core::wsframe::FrameDecoder;
    use tokio::net::TcpListener;

    #[test]
    fn forged_tickets_never_verify_and_cover_every_refusal() {
        let real = Signer::new(b"the server's secret", 600);
        let src = Ipv4Addr::new(127, 66, 0, 9);
        let now = 1_700_000_000;
        let mut rng = Rng::new(3);
        let mut kinds = std::collections::BTreeSet::new();
        for k in 0..8 {
            let t = forge_ticket(k, "space1", src, now, &mut rng);
            let e = Ticket::verify(&real, &t, "space1", IpAddr::V4(src), now)
                .expect_err("a forged ticket verifies");
            kinds.insert(e.kind());
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["bad_signature", "malformed", "unknown_key"]
        );
    }

    #[test]
    fn every_garbage_frame_is_a_protocol_violation_for_levee() {
        let mut rng = Rng::new(5);
        for k in 0..10 {
            let g = garbage_frame(k, &mut rng);
            let mut d = FrameDecoder::new(1024);
            d.push(&g);
            let e = loop {
                match d.next() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("variant {k} was accepted as a partial frame"),
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(e.close_code(), 1002 | 1009),
                "variant {k}: {}",
                e.close_code()
            );
        }
    }

    #[test]
    fn flood_bodies_rotate_through_four_kinds() {
        let b: Vec<String> = (0..4).map(flood_body).collect();
        assert_eq!(b[0], "{}");
        assert!(b[1].contains("queue_token"));
        assert!(b[2].contains("\"pow\""));
        assert!(serde_json::from_str::<serde_json::Value>(&b[1]).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&b[2]).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&b[3]).is_err());
    }

    /// A server that refuses every request with 429 at once, and lets slow heads hang until
    /// it cuts them with 408 after 150 ms.
    async fn refusing_server() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
                    loop {
                        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                            Err(_) => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                                    .await;
                                return;
                            }
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        }
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = s
                                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}")
                                .await;
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn attackers_are_paced_bounded_in_time_and_counted_by_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(refusing_server());
        let server = std::thread::spawn(move || {
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(1500)).await });
        });
        let mut config = AttackConfig {
            sources: "127.66.7.0/29".into(),
            ..AttackConfig::default()
        };
        config.join_flood = ModuleConfig::new(4, 200.0);
        config.forged_ticket = ModuleConfig::new(2, 100.0);
        config.slowloris = ModuleConfig {
            interval: Some(Duration::from_millis(20)),
            ..ModuleConfig::new(3, 0.0)
        };
        config.validate().unwrap();
        let start = now_us() + 50_000;
        let plan = AttackPlan {
            server: format!("http://{addr}"),
            space: "sp".into(),
            start_us: start,
            end_us: start + 500_000,
            config,
            seed: 9,
        };
        let (_tx, stop) = watch::channel(false);
        let r = run_attack(&plan, stop);
        assert!(now_us() < start + 3_000_000, "the attack ended on time");
        assert_eq!(r.addresses, 6);
        let jf = summarize(&r.modules["join_flood"]);
        // 200/s for 0.5 s: about 100 attempts, never more than the rate allows.
        assert!((60..=101).contains(&jf.attempts), "{jf:?}");
        assert_eq!(jf.refusals["http_429"], jf.attempts);
        assert!(jf.cpu_s > 0.0 && jf.bytes_sent > 0 && jf.bytes_received > 0);
        let ft = summarize(&r.modules["forged_ticket"]);
        assert!(ft.attempts >= 30, "{ft:?}");
        assert_eq!(ft.statuses["429"], ft.attempts);
        let sl = summarize(&r.modules["slowloris"]);
        assert!(sl.attempts >= 3, "{sl:?}");
        assert!(sl.statuses.get("408").copied().unwrap_or(0) >= 3, "{sl:?}");
        assert!(sl.held_ms.p50 >= 140.0, "{sl:?}");
        assert!(sl.bytes_sent > 0);
        let _ = server.join();
    }
}
